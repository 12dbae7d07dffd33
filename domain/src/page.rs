//! Lists are newest first and paged by cursor: `limit` rows with an id
//! below `before_id`, and `next_before_id` only when another page exists.

use std::cmp::Reverse;

use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Select,
};

use crate::error::DomainResult;

/// A page of a list, newest first, with the cursor for the next page.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_before_id: Option<i64>,
}

/// Fetches `limit + 1` rows so that the cursor is offered only when another
/// page really exists.
fn paginate<T>(mut rows: Vec<T>, limit: u64, id: impl Fn(&T) -> i64) -> Page<T> {
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let next_before_id = if more { rows.last().map(&id) } else { None };
    Page {
        items: rows,
        next_before_id,
    }
}

impl<T> Page<T> {
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_before_id: self.next_before_id,
        }
    }
}

/// One page of the rows of `query`, newest first by `id`: at most `limit`
/// rows below `before_id`, and the next page's cursor when there is one.
///
/// A list's filters should match an index that ends in `id` (the user's
/// `(user_id, id)`, or `(user_id, status, id)` with a status), with no
/// other condition left over: then the page is read from that index back
/// from the newest, `limit + 1` rows whatever the history. A condition the
/// index does not cover is checked row after row, and a user whose
/// matching rows are all old (or who has none) reads back through every
/// row, the user's or the table's: PostgreSQL's generic plan for this
/// statement, the one a connection settles on after five runs, takes that
/// index path whatever the user.
pub async fn newest_first<C, E>(
    conn: &C,
    query: Select<E>,
    id: E::Column,
    limit: u64,
    before_id: Option<i64>,
    id_of: impl Fn(&E::Model) -> i64,
) -> DomainResult<Page<E::Model>>
where
    C: ConnectionTrait,
    E: EntityTrait,
{
    newest_first_of_any(
        conn,
        query,
        vec![Condition::all()],
        id,
        limit,
        before_id,
        id_of,
    )
    .await
}

/// `newest_first` over the rows of `query` that match any of `branches`
/// (conditions no row matches two of): each branch is read on its own,
/// newest first along its own index, and the pages merged. Written as one
/// `OR`, no index gives the order, and every matching row is read and
/// sorted.
pub async fn newest_first_of_any<C, E>(
    conn: &C,
    mut query: Select<E>,
    branches: Vec<Condition>,
    id: E::Column,
    limit: u64,
    before_id: Option<i64>,
    id_of: impl Fn(&E::Model) -> i64,
) -> DomainResult<Page<E::Model>>
where
    C: ConnectionTrait,
    E: EntityTrait,
{
    if let Some(before) = before_id {
        query = query.filter(id.lt(before));
    }
    let query = query.order_by_desc(id).limit(limit + 1);
    let mut rows = Vec::new();
    for branch in branches {
        rows.extend(query.clone().filter(branch).all(conn).await?);
    }
    rows.sort_by_key(|row| Reverse(id_of(row)));
    Ok(paginate(rows, limit, id_of))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagination_offers_a_cursor_only_when_more_exist() {
        let page = paginate(vec![9, 8, 7], 2, |x| *x);
        assert_eq!(page.items, vec![9, 8]);
        assert_eq!(page.next_before_id, Some(8));
        let page = paginate(vec![9, 8], 2, |x| *x);
        assert_eq!(page.next_before_id, None);
    }

    /// Two branches' pages, merged, are the page of their union.
    #[tokio::test]
    async fn the_branches_merge_into_one_page_of_their_union() {
        use infra::entities::user;
        use sea_orm::{ActiveModelTrait, ActiveValue::Set};

        let dir = tempfile::tempdir().unwrap();
        let db = crate::testing::database(&dir).await.conn;
        for id in 1..=9i64 {
            user::ActiveModel {
                id: Set(id),
                email: Set(format!("u{id}@example.com")),
                account_number: Set(format!("A{id}")),
                referral_code: Set(format!("R{id}")),
                referrer_id: Set(None),
                created_at: Set(chrono::Utc::now()),
            }
            .insert(&db)
            .await
            .unwrap();
        }
        let odd = user::Column::Id.is_in([1, 3, 5, 7, 9]);
        let low_even = user::Column::Id.is_in([2, 4]);
        let page = |limit, before_id| {
            let db = &db;
            let branches = vec![
                Condition::all().add(odd.clone()),
                Condition::all().add(low_even.clone()),
            ];
            async move {
                let page = newest_first_of_any(
                    db,
                    user::Entity::find(),
                    branches,
                    user::Column::Id,
                    limit,
                    before_id,
                    |u| u.id,
                )
                .await
                .unwrap();
                (
                    page.items.iter().map(|u| u.id).collect::<Vec<_>>(),
                    page.next_before_id,
                )
            }
        };
        assert_eq!(page(3, None).await, (vec![9, 7, 5], Some(5)));
        assert_eq!(page(3, Some(5)).await, (vec![4, 3, 2], Some(2)));
        assert_eq!(page(3, Some(2)).await, (vec![1], None));
        assert_eq!(page(7, None).await, (vec![9, 7, 5, 4, 3, 2, 1], None));
        assert_eq!(page(6, None).await, (vec![9, 7, 5, 4, 3, 2], Some(2)));
    }
}
