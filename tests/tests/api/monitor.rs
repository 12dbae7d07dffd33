//! The lock monitor page is served by the binary itself: no token to load it
//! (it asks for one in the browser), its own script and style, and headers
//! that keep anything but this origin's code out of it. Its behaviour in a
//! browser is tested by scripts/browser-test.sh.

use tests::{Engine, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_monitor_page_and_its_assets_are_served() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let page = app.get("/admin/locks", None).await;
    page.expect(200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.text.contains("Transaction Lock Monitor"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));

    for (path, content_type) in [
        ("/admin/locks/monitor.js", "text/javascript; charset=utf-8"),
        ("/admin/locks/monitor.css", "text/css; charset=utf-8"),
    ] {
        assert!(
            page.text.contains(&format!("\"{path}\"")),
            "the page does not load {path}"
        );
        let asset = app.get(path, None).await;
        asset.expect(200);
        assert_eq!(asset.header("content-type"), Some(content_type));
        assert!(!asset.text.is_empty());
    }
    // Nothing loaded from anywhere else.
    assert!(!page.text.contains("http://") && !page.text.contains("https://"));

    app.get("/admin/locks/other.js", None)
        .await
        .problem(404, "not_found");
    let post = app
        .send(app.client.post(format!("{}/admin/locks", app.base)))
        .await;
    post.expect(405);
    app.stop().await;
}
