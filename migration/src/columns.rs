//! The column shapes, index and foreign-key builders every migration uses,
//! so that one kind of column is declared the same way everywhere. Changing
//! one of these changes the schema of every migration that uses it: add a
//! new helper instead.

use sea_orm_migration::prelude::*;

/// A column of type `ty` that every row fills.
fn required(col: impl IntoIden, ty: ColumnType) -> ColumnDef {
    ColumnDef::new_with_type(col, ty).not_null().to_owned()
}

/// The same column, optional: `NULL` where its shape says `NOT NULL`.
pub(crate) fn nullable(mut col: ColumnDef) -> ColumnDef {
    col.null();
    col
}

/// The same column as the table's primary key on its own.
pub(crate) fn natural_key(mut col: ColumnDef) -> ColumnDef {
    col.primary_key();
    col
}

/// The surrogate key: `BIGINT` auto-increment primary key.
pub(crate) fn id(col: impl IntoIden) -> ColumnDef {
    bigint(col).auto_increment().primary_key().to_owned()
}

/// A required `BIGINT`: ids of other rows, epoch milliseconds.
pub(crate) fn bigint(col: impl IntoIden) -> ColumnDef {
    required(col, ColumnType::BigInteger)
}

/// A `BIGINT` that starts at 0: money in minor units, counters.
pub(crate) fn bigint_zero(col: impl IntoIden) -> ColumnDef {
    bigint(col).default(0).to_owned()
}

/// A required `BOOLEAN` that starts false: a flag a later step sets.
pub(crate) fn boolean_false(col: impl IntoIden) -> ColumnDef {
    required(col, ColumnType::Boolean).default(false).to_owned()
}

pub(crate) fn integer(col: impl IntoIden) -> ColumnDef {
    required(col, ColumnType::Integer)
}

/// A required `VARCHAR(len)`.
pub(crate) fn varchar(col: impl IntoIden, len: u32) -> ColumnDef {
    required(col, ColumnType::String(StringLen::N(len)))
}

pub(crate) fn uuid(col: impl IntoIden) -> ColumnDef {
    required(col, ColumnType::Uuid)
}

/// A required timestamp with time zone: times shown to people.
pub(crate) fn ts(col: impl IntoIden) -> ColumnDef {
    required(col, ColumnType::TimestampWithTimeZone)
}

/// An unbounded `TEXT`: lists and documents stored as JSON.
pub(crate) fn text(col: impl IntoIden) -> ColumnDef {
    required(col, ColumnType::Text)
}

/// The tables that later tables point at, by their key.
#[derive(DeriveIden)]
pub(crate) enum Users {
    Table,
    Id,
}

#[derive(DeriveIden)]
pub(crate) enum Wallets {
    Table,
    Id,
}

/// What a new table carries beside its columns. Each kind keeps the order
/// it is given in, whatever the order among the kinds.
pub(crate) enum Constraint {
    PrimaryKey(IndexCreateStatement),
    ForeignKey(ForeignKeyCreateStatement),
    Check(Check),
}

/// An index over `cols`, in that order.
fn index_over<C: IntoIden>(cols: impl IntoIterator<Item = C>) -> IndexCreateStatement {
    let mut index = Index::create();
    for col in cols {
        index.col(col);
    }
    index
}

/// A primary key over several columns.
pub(crate) fn primary_key<C: IntoIden>(cols: impl IntoIterator<Item = C>) -> Constraint {
    Constraint::PrimaryKey(index_over(cols))
}

fn fk_statement(
    name: &str,
    col: impl IntoIden,
    to: (impl IntoTableRef, impl IntoIden),
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name)
        .from_col(col)
        .to(to.0, to.1)
        .to_owned()
}

/// A named foreign key from the new table's `col` to `to.0`'s `to.1`.
pub(crate) fn foreign_key(
    name: &str,
    col: impl IntoIden,
    to: (impl IntoTableRef, impl IntoIden),
) -> Constraint {
    Constraint::ForeignKey(fk_statement(name, col, to))
}

/// A named foreign key from the new table's `col` to `users.id`.
pub(crate) fn user_fk(name: &str, col: impl IntoIden) -> Constraint {
    foreign_key(name, col, (Users::Table, Users::Id))
}

/// A named foreign key from the new table's `col` to `wallets.id`.
pub(crate) fn wallet_fk(name: &str, col: impl IntoIden) -> Constraint {
    foreign_key(name, col, (Wallets::Table, Wallets::Id))
}

/// A named foreign key whose rows go when the row they point to goes.
pub(crate) fn cascade_foreign_key(
    name: &str,
    col: impl IntoIden,
    to: (impl IntoTableRef, impl IntoIden),
) -> Constraint {
    Constraint::ForeignKey(
        fk_statement(name, col, to)
            .on_delete(ForeignKeyAction::Cascade)
            .to_owned(),
    )
}

/// A named `CHECK`.
pub(crate) fn check(name: &'static str, expr: Expr) -> Constraint {
    Constraint::Check(Check::named(name, expr))
}

/// A named `CHECK (col > 0)`.
pub(crate) fn positive(name: &'static str, col: impl IntoIden) -> Constraint {
    check(name, Expr::col(col).gt(0))
}

/// A named `CHECK (col >= 0)`.
pub(crate) fn nonneg(name: &'static str, col: impl IntoIden) -> Constraint {
    check(name, Expr::col(col).gte(0))
}

/// A named `CHECK (col IN (values…))`: the values an enum column takes.
pub(crate) fn one_of<const N: usize>(
    name: &'static str,
    col: impl IntoIden,
    values: [&'static str; N],
) -> Constraint {
    check(name, Expr::col(col).is_in(values))
}

/// An index named `name` over `cols`, on the table it is created with. A
/// partial index adds its condition with `and_where`.
pub(crate) fn ix<C: IntoIden>(
    name: &'static str,
    cols: impl IntoIterator<Item = C>,
) -> IndexCreateStatement {
    index_over(cols).name(name).to_owned()
}

/// A unique index.
pub(crate) fn ux<C: IntoIden>(
    name: &'static str,
    cols: impl IntoIterator<Item = C>,
) -> IndexCreateStatement {
    ix(name, cols).unique().to_owned()
}

/// `CREATE TABLE` with its columns and constraints, then its indexes in the
/// order given.
pub(crate) async fn create_table(
    manager: &SchemaManager<'_>,
    table: impl IntoIden,
    cols: impl IntoIterator<Item = ColumnDef>,
    constraints: impl IntoIterator<Item = Constraint>,
    indexes: impl IntoIterator<Item = IndexCreateStatement>,
) -> Result<(), DbErr> {
    let table = table.into_iden();
    let mut create = Table::create();
    create.table(table.clone());
    for col in cols {
        create.col(col);
    }
    for constraint in constraints {
        match constraint {
            Constraint::PrimaryKey(mut index) => create.primary_key(&mut index),
            Constraint::ForeignKey(mut fk) => create.foreign_key(&mut fk),
            Constraint::Check(check) => create.check(check),
        };
    }
    manager.create_table(create.to_owned()).await?;
    create_indexes(manager, table, indexes).await
}

/// Creates indexes on an existing table, in the order given.
pub(crate) async fn create_indexes(
    manager: &SchemaManager<'_>,
    table: impl IntoIden,
    indexes: impl IntoIterator<Item = IndexCreateStatement>,
) -> Result<(), DbErr> {
    let table = table.into_iden();
    for mut index in indexes {
        manager
            .create_index(index.table(table.clone()).to_owned())
            .await?;
    }
    Ok(())
}

/// Drops the named indexes of `table`.
pub(crate) async fn drop_indexes(
    manager: &SchemaManager<'_>,
    table: impl IntoIden,
    names: impl IntoIterator<Item = &'static str>,
) -> Result<(), DbErr> {
    let table = table.into_iden();
    for name in names {
        manager
            .drop_index(Index::drop().name(name).table(table.clone()).to_owned())
            .await?;
    }
    Ok(())
}

/// `ALTER TABLE table ADD COLUMN …` (SQLite takes one column per statement).
pub(crate) async fn add_column(
    manager: &SchemaManager<'_>,
    table: impl IntoIden,
    col: ColumnDef,
) -> Result<(), DbErr> {
    manager
        .alter_table(Table::alter().table(table).add_column(col).to_owned())
        .await
}

/// `ALTER TABLE table DROP COLUMN col`.
pub(crate) async fn drop_column(
    manager: &SchemaManager<'_>,
    table: impl IntoIden,
    col: impl IntoIden,
) -> Result<(), DbErr> {
    manager
        .alter_table(Table::alter().table(table).drop_column(col).to_owned())
        .await
}

/// Drops the tables in the order given (dependents first).
pub(crate) async fn drop_tables(
    manager: &SchemaManager<'_>,
    tables: impl IntoIterator<Item = DynIden>,
) -> Result<(), DbErr> {
    for table in tables {
        manager
            .drop_table(Table::drop().table(table).to_owned())
            .await?;
    }
    Ok(())
}
