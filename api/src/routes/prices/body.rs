//! Bodies of the Prices routes.

use domain::money::format_units;
use domain::trading::prices::PriceView;
use poem_openapi::Object;

use crate::routes::shared::{DecimalString, timestamp};

#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct PriceRequest {
    pub price: DecimalString,
}

#[derive(Object, Debug, Clone)]
pub struct Price {
    pub symbol: String,
    pub price: String,
    pub updated_at: String,
}

impl From<&PriceView> for Price {
    fn from(p: &PriceView) -> Self {
        Self {
            symbol: p.symbol.clone(),
            price: format_units(p.price),
            updated_at: timestamp(p.updated_at),
        }
    }
}
