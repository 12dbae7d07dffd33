//! The column shapes, index and foreign-key builders both migrations use, so
//! that one kind of column is declared the same way everywhere. Changing one
//! of these changes the schema of every migration that uses it: add a new
//! helper instead.

use sea_orm_migration::prelude::*;

/// The surrogate key: `BIGINT` auto-increment primary key.
pub(crate) fn id(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .big_integer()
        .not_null()
        .auto_increment()
        .primary_key()
        .to_owned()
}

/// A required `BIGINT`: ids of other rows, epoch milliseconds.
pub(crate) fn bigint(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).big_integer().not_null().to_owned()
}

/// A `BIGINT` that starts at 0: money in minor units, counters.
pub(crate) fn bigint_zero(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .big_integer()
        .not_null()
        .default(0)
        .to_owned()
}

pub(crate) fn nullable_bigint(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).big_integer().null().to_owned()
}

pub(crate) fn integer(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).integer().not_null().to_owned()
}

pub(crate) fn nullable_integer(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).integer().null().to_owned()
}

/// A required `VARCHAR(len)`.
pub(crate) fn varchar(col: impl IntoIden, len: u32) -> ColumnDef {
    ColumnDef::new(col).string_len(len).not_null().to_owned()
}

pub(crate) fn nullable_varchar(col: impl IntoIden, len: u32) -> ColumnDef {
    ColumnDef::new(col).string_len(len).null().to_owned()
}

/// An optional unbounded `TEXT`.
pub(crate) fn nullable_text(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).text().null().to_owned()
}

pub(crate) fn uuid(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).uuid().not_null().to_owned()
}

pub(crate) fn nullable_uuid(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).uuid().null().to_owned()
}

/// A required timestamp with time zone: times shown to people.
pub(crate) fn ts(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

pub(crate) fn nullable_ts(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .null()
        .to_owned()
}

/// An unbounded `TEXT`: lists and documents stored as JSON.
pub(crate) fn text(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).text().not_null().to_owned()
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

/// A primary key over several columns.
pub(crate) fn primary_key<C: IntoIden>(cols: impl IntoIterator<Item = C>) -> Constraint {
    let mut index = Index::create();
    for col in cols {
        index.col(col);
    }
    Constraint::PrimaryKey(index)
}

fn fk_statement(
    name: &str,
    from: (impl IntoTableRef, impl IntoIden),
    to: (impl IntoTableRef, impl IntoIden),
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name)
        .from(from.0, from.1)
        .to(to.0, to.1)
        .to_owned()
}

/// A named foreign key from `from.0`'s column `from.1` to `to.0`'s `to.1`.
pub(crate) fn foreign_key(
    name: &str,
    from: (impl IntoTableRef, impl IntoIden),
    to: (impl IntoTableRef, impl IntoIden),
) -> Constraint {
    Constraint::ForeignKey(fk_statement(name, from, to))
}

/// A named foreign key from `table`'s `col` to `users.id`.
pub(crate) fn user_fk(name: &str, table: impl IntoIden, col: impl IntoIden) -> Constraint {
    foreign_key(name, (table, col), (Users::Table, Users::Id))
}

/// A named foreign key from `table`'s `col` to `wallets.id`.
pub(crate) fn wallet_fk(name: &str, table: impl IntoIden, col: impl IntoIden) -> Constraint {
    foreign_key(name, (table, col), (Wallets::Table, Wallets::Id))
}

/// A named foreign key whose rows go when the row they point to goes.
pub(crate) fn cascade_foreign_key(
    name: &str,
    from: (impl IntoTableRef, impl IntoIden),
    to: (impl IntoTableRef, impl IntoIden),
) -> Constraint {
    Constraint::ForeignKey(
        fk_statement(name, from, to)
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

/// `CREATE TABLE` with its columns and constraints.
pub(crate) async fn create_table(
    manager: &SchemaManager<'_>,
    table: impl IntoIden,
    cols: impl IntoIterator<Item = ColumnDef>,
    constraints: impl IntoIterator<Item = Constraint>,
) -> Result<(), DbErr> {
    let mut create = Table::create();
    create.table(table);
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
    manager.create_table(create.to_owned()).await
}

/// An index to create: its name, its columns, whether it is unique.
pub(crate) struct IndexSpec<C> {
    name: &'static str,
    cols: Vec<C>,
    unique: bool,
}

/// A plain index.
pub(crate) fn ix<C>(name: &'static str, cols: Vec<C>) -> IndexSpec<C> {
    IndexSpec {
        name,
        cols,
        unique: false,
    }
}

/// A unique index.
pub(crate) fn ux<C>(name: &'static str, cols: Vec<C>) -> IndexSpec<C> {
    IndexSpec {
        name,
        cols,
        unique: true,
    }
}

/// Creates the indexes of one table, in the order given.
pub(crate) async fn indexes<C: IntoIden>(
    manager: &SchemaManager<'_>,
    table: impl IntoIden,
    specs: impl IntoIterator<Item = IndexSpec<C>>,
) -> Result<(), DbErr> {
    let table = table.into_iden();
    for spec in specs {
        let mut index = Index::create();
        index.name(spec.name).table(table.clone());
        for col in spec.cols {
            index.col(col);
        }
        if spec.unique {
            index.unique();
        }
        manager.create_index(index.to_owned()).await?;
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
