//! Lists are newest first and paged by cursor: `limit` rows with an id
//! below `before_id`, and `next_before_id` only when another page exists.

use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Select,
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
pub async fn newest_first<C, E>(
    conn: &C,
    mut query: Select<E>,
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
    let rows = query.order_by_desc(id).limit(limit + 1).all(conn).await?;
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
}
