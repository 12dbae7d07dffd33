//! Hand-written SQL for the few queries the query builder cannot express on
//! both engines (recursive walks of the referral tree, grouped sums). Write
//! `?` placeholders; PostgreSQL gets them numbered.

use sea_orm::{DbBackend, Statement, Value};

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
    fn placeholders_are_numbered_for_postgres_only() {
        let values = vec![Value::from(1i64), Value::from(2i64)];
        let pg = statement(DbBackend::Postgres, "a = ? AND b < ?", values.clone());
        assert_eq!(pg.sql, "a = $1 AND b < $2");
        let lite = statement(DbBackend::Sqlite, "a = ? AND b < ?", values);
        assert_eq!(lite.sql, "a = ? AND b < ?");
    }
}
