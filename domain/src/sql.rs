//! Hand-written SQL for the few queries the query builder cannot express on
//! both engines (recursive walks of the referral tree, grouped sums). Write
//! `?` placeholders; PostgreSQL gets them numbered. Also the one filter for
//! rows that lapse (`status_as_of`).

use sea_orm::{ColumnTrait, Condition, DbBackend, Statement, Value};

/// The status rows that lapse are stored with, and read as once lapsed.
const EXPIRED: &str = "expired";

/// The rows whose status reads as `wanted` at `at` (epoch ms), where a row
/// still `live` (a hold `held`, a lock `active`) past its expiry reads as
/// `expired` before any cleanup has marked it: `live` takes only unexpired
/// rows, `expired` takes the lapsed live ones too, any other status is
/// taken as stored.
pub fn status_as_of<C: ColumnTrait>(
    status: C,
    expires_at_ms: C,
    wanted: &str,
    live: &str,
    at: i64,
) -> Condition {
    if wanted == live {
        Condition::all()
            .add(status.eq(live))
            .add(expires_at_ms.gt(at))
    } else if wanted == EXPIRED {
        Condition::any().add(status.eq(EXPIRED)).add(
            Condition::all()
                .add(status.eq(live))
                .add(expires_at_ms.lte(at)),
        )
    } else {
        Condition::all().add(status.eq(wanted))
    }
}

pub fn statement(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
    let sql = match backend {
        DbBackend::Postgres => {
            let mut out = String::with_capacity(sql.len() + 8);
            let mut n = 0;
            for c in sql.chars() {
                if c == '?' {
                    n += 1;
                    out.push('$');
                    out.push_str(&n.to_string());
                } else {
                    out.push(c);
                }
            }
            out
        }
        _ => sql.to_owned(),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapsed_rows_read_as_expired() {
        use infra::entities::hold::{Column, Entity};
        use sea_orm::{EntityTrait, QueryFilter, QueryTrait};
        let sql = |wanted| {
            let cond = status_as_of(Column::Status, Column::ExpiresAtMs, wanted, "held", 7);
            let query = Entity::find().filter(cond).build(DbBackend::Sqlite);
            let sql = query.to_string();
            sql[sql.find("WHERE").unwrap_or(0)..].to_owned()
        };
        assert_eq!(
            sql("held"),
            r#"WHERE "holds"."status" = 'held' AND "holds"."expires_at_ms" > 7"#
        );
        assert_eq!(
            sql("expired"),
            r#"WHERE "holds"."status" = 'expired' OR ("holds"."status" = 'held' AND "holds"."expires_at_ms" <= 7)"#
        );
        assert_eq!(sql("voided"), r#"WHERE "holds"."status" = 'voided'"#);
    }

    #[test]
    fn placeholders_are_numbered_for_postgres_only() {
        let values = vec![Value::from(1i64), Value::from(2i64)];
        let pg = statement(DbBackend::Postgres, "a = ? AND b < ?", values.clone());
        assert_eq!(pg.sql, "a = $1 AND b < $2");
        let lite = statement(DbBackend::Sqlite, "a = ? AND b < ?", values);
        assert_eq!(lite.sql, "a = ? AND b < ?");
    }
}
