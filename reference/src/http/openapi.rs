//! The OpenAPI document of protocol `/v1`, generated from the handlers and the
//! wire types. `reference/openapi.json` is this document, committed; a test
//! fails when the two differ (`REDRAIN_BLESS=1` rewrites the file).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The protocol's document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "redrain wallet protocol",
        version = "1",
        description = "What a reward wallet speaks so redrain can load it, check its invariants and compare it with the reference. Shadow traffic carries `X-Shadow: 1`; admin routes need `Authorization: Bearer <token>`. Amounts are integer cents.",
        license(name = "Apache-2.0")
    ),
    paths(
        super::post_award, super::get_wallet, super::post_withdrawal, super::get_stock,
        super::get_counter, super::get_health, super::get_metrics, super::get_announcements,
        super::get_reconciliation, super::get_switches, super::put_switch, super::post_reissue,
        super::post_announcement, super::get_audit, super::post_audit_orders, super::put_clock,
        super::post_drain, super::faults::get_capabilities, super::faults::get_faults,
        super::faults::post_fault,
    ),
    modifiers(&AdminToken),
    tags(
        (name = "wallet", description = "What users and upstream call"),
        (name = "operations", description = "Health, metrics, announcements"),
        (name = "admin", description = "Bearer token required: switches, reissue, audit, clock, drain, faults"),
    )
)]
#[derive(Debug)]
pub struct ApiDoc;

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as pretty JSON with a final newline (the committed form).
pub fn document() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    text.push('\n');
    text
}
