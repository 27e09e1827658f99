//! The admin API: accounts, keys and limits. Served on its own listener, guarded by the admin
//! token. Not on the signal path, so it uses serde_json freely.

use serde::Deserialize;
use serde_json::{json, Value as Json};

use super::{render, Method, Request, Response};
use crate::auth::{constant_time_eq, generate_key_of, hash_key, key_from_headers};
use crate::config::parse_limit_overrides;
use crate::engine::account::{AccountName, LimitOverrides, Roles};
use crate::engine::risk::RejectCode;
use crate::engine::types::{AccountId, KeyId, Nanos, MAX_START_CASH};
use crate::error::ApiError;
use crate::error::Code;
use crate::fixed::{parse_decimal, MONEY_DECIMALS};
use crate::journal::Refusal;
use crate::json::Writer;
use crate::metrics::Route;
use crate::node::{Elsewhere, Node, Routes};

/// An admin error whose message is built at run time (the admin API may allocate).
struct AdminError {
    code: Code,
    message: String,
}

impl AdminError {
    fn new(code: Code, message: impl Into<String>) -> Self {
        AdminError { code, message: message.into() }
    }
}

impl From<ApiError<'_>> for AdminError {
    fn from(e: ApiError<'_>) -> Self {
        let mut out = Vec::new();
        e.write(&mut out);
        let v: Json = serde_json::from_slice(&out).unwrap_or_default();
        AdminError::new(e.code, v["error"]["message"].as_str().unwrap_or_default())
    }
}

fn json_error(e: serde_json::Error) -> AdminError {
    use serde_json::error::Category;
    let msg = e.to_string();
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            AdminError::new(Code::JsonMalformed, format!("malformed JSON: {msg}"))
        }
        Category::Data if msg.starts_with("unknown field") => AdminError::new(Code::RequestUnknownField, msg),
        Category::Data if msg.starts_with("missing field") => AdminError::new(Code::RequestMissingField, msg),
        Category::Data => AdminError::new(Code::RequestInvalidField, msg),
    }
}

fn parse_body<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, AdminError> {
    let body = if body.trim_ascii().is_empty() { b"{}" as &[u8] } else { body };
    serde_json::from_slice(body).map_err(json_error)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    name: String,
    #[serde(default = "default_tier")]
    tier: String,
    #[serde(default)]
    cash: Option<Json>,
    #[serde(default)]
    limits: Option<Json>,
}

fn default_tier() -> String {
    "free".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    #[serde(default)]
    roles: Vec<String>,
}

/// The admin API's routes.
#[derive(Default)]
pub struct Admin {
    /// The cluster as its thread last saw it (a cluster node only).
    pub cluster: Option<std::sync::Arc<crate::cluster::Status>>,
}

impl Routes for Admin {
    fn route(&self, node: &mut Node, req: &Request<'_>, resp: &mut Response, now: Nanos) -> Route {
        handle(self, node, req, resp, now);
        Route::Admin
    }

    fn complete(&self, _: &mut Node, _: &mut Response) {}

    fn counted(&self) -> bool {
        false
    }

    fn unrouted(&self) -> Route {
        Route::Admin
    }
}

/// Serves one admin API request into `resp`.
fn handle(admin: &Admin, node: &mut Node, req: &Request<'_>, resp: &mut Response, now: Nanos) {
    resp.reset();
    resp.no_store = true;
    let result = check_admin_token(node, req).and_then(|()| {
        resp.authenticated = true;
        let reads = matches!(req.method, Method::Get | Method::Head);
        if let Some(refusal) = node.journal.refusal().filter(|_| !reads) {
            node.metrics.journal_rejected += 1;
            resp.retry_after = Some(1);
            return Err(match refusal {
                Refusal::Full => AdminError::new(
                    Code::JournalFull,
                    "the disk holding the journal is full, so nothing was changed; retry after 1 s",
                ),
                Refusal::Failing | Refusal::Closed => AdminError::new(
                    Code::JournalUnavailable,
                    "the journal cannot write, so nothing was changed; retry after 1 s",
                ),
            });
        }
        admin_route(admin, node, req, resp, now)
    });
    // What a cluster node changed is known to every node once answered.
    let changed = !matches!(req.method, Method::Get | Method::Head);
    resp.registered = changed && result.is_ok() && node.cluster.is_some() && resp.elsewhere.is_none();
    match result {
        Ok(value) => {
            if resp.status == 200 && value.is_null() {
                resp.status = 404;
            }
            let _ = serde_json::to_writer(&mut resp.body, &value);
        }
        Err(e) => {
            resp.status = e.code.status();
            resp.body.clear();
            let _ = serde_json::to_writer(
                &mut resp.body,
                &json!({"error": {"code": e.code.as_str(), "message": e.message}}),
            );
        }
    }
    node.metrics.count(Route::Admin, resp.status);
}

fn check_admin_token(node: &Node, req: &Request<'_>) -> Result<(), AdminError> {
    let presented = key_from_headers(req.authorization, None);
    match presented {
        Some(t) if constant_time_eq(t, node.admin_token.as_bytes()) => Ok(()),
        Some(_) => Err(AdminError::new(Code::AdminUnauthorized, "wrong admin token")),
        None => {
            Err(AdminError::new(Code::AdminUnauthorized, "send the admin token as 'Authorization: Bearer <token>'"))
        }
    }
}

fn admin_route(
    admin: &Admin,
    node: &mut Node,
    req: &Request<'_>,
    resp: &mut Response,
    now: Nanos,
) -> Result<Json, AdminError> {
    let parts: Vec<&str> = req.path.trim_end_matches('/').split('/').skip(1).collect();
    match (req.method, parts.as_slice()) {
        (Method::Get, ["admin", "cluster"]) => {
            let cluster = admin.cluster.as_ref().ok_or_else(|| {
                AdminError::new(Code::RouteNotFound, "this node is standalone: it has no [cluster] section")
            })?;
            let mut text = Vec::new();
            cluster
                .write_json((node.journal.durable(), node.journal.local()), &mut crate::json::Writer::new(&mut text));
            serde_json::from_slice(&text).map_err(json_error)
        }
        (_, ["admin", "cluster"]) => not_allowed(resp, "GET"),
        (Method::Post, ["admin", "accounts"]) => {
            // On a cluster node the registry places it: on the live member with the fewest.
            if node.cluster.is_some() && !req.forwarded {
                resp.elsewhere = Some(Elsewhere::NewAccount);
                return Ok(Json::Null);
            }
            let v = admin_create_account(node, req.body, now)?;
            resp.status = 201;
            Ok(v)
        }
        (Method::Get, ["admin", "accounts"]) if node.cluster.is_some() && !req.forwarded => {
            // Each member lists its own: the answer is all of them, by id.
            resp.elsewhere = Some(Elsewhere::Everyone);
            Ok(Json::Null)
        }
        (Method::Get, ["admin", "accounts"]) => Ok(admin_list_accounts(node)),
        (_, ["admin", "accounts"]) => not_allowed(resp, "GET, POST"),
        (Method::Get, ["admin", "accounts", id]) => {
            let id = admin_account_id(node, req, resp, id)?;
            Ok(admin_account_json(node, id))
        }
        (Method::Post, ["admin", "accounts", id, "keys"]) => {
            let id = admin_account_id(node, req, resp, id)?;
            let v = admin_create_key(node, id, req.body, now)?;
            resp.status = 201;
            Ok(v)
        }
        (_, ["admin", "accounts", _, "keys"]) => not_allowed(resp, "POST"),
        (Method::Put, ["admin", "accounts", id, "limits"]) => {
            let id = admin_account_id(node, req, resp, id)?;
            admin_set_limits(node, id, req.body, now)
        }
        (_, ["admin", "accounts", _, "limits"]) => not_allowed(resp, "PUT"),
        (Method::Delete, ["admin", "keys", id]) => {
            let no_key = || AdminError::new(Code::KeyNotFound, "no such key");
            let key = id.parse::<u32>().ok().filter(|&k| k > 0).map(KeyId).ok_or_else(no_key)?;
            if node.engine.key(key).is_none() && node.cluster.is_some() && !req.forwarded {
                resp.elsewhere = Some(Elsewhere::KeyId(key));
                return Err(no_key());
            }
            let found = node.engine.revoke_key(key, now);
            node.after_command();
            if !found {
                return Err(AdminError::new(Code::KeyNotFound, "no such key"));
            }
            Ok(json!({"key_id": key.0, "revoked": true}))
        }
        (_, ["admin", "keys", _]) => not_allowed(resp, "DELETE"),
        _ => Err(AdminError::new(Code::RouteNotFound, "no such route")),
    }
}

/// The account of an admin path; one this node does not own, on a cluster node, is the
/// business of its owner (`resp.elsewhere`).
fn admin_account_id(node: &Node, req: &Request<'_>, resp: &mut Response, id: &str) -> Result<AccountId, AdminError> {
    let not_found = || AdminError::new(Code::Engine(RejectCode::AccountNotFound), format!("no account {id:?}"));
    let id = id.parse::<u32>().ok().filter(|&i| i > 0).map(AccountId).ok_or_else(not_found)?;
    if node.engine.account(id).is_none() {
        if node.cluster.is_some() && !req.forwarded {
            resp.elsewhere = Some(Elsewhere::Account(id));
        }
        return Err(not_found());
    }
    Ok(id)
}

fn admin_create_account(node: &mut Node, body: &[u8], now: Nanos) -> Result<Json, AdminError> {
    let req: NewAccount = parse_body(body)?;
    let name = AccountName::new(&req.name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| AdminError::new(Code::RequestInvalidField, "name must be 1–64 bytes"))?;
    if node.engine.tier_by_name(&req.tier).is_none() {
        let known: Vec<&str> = node.engine.tiers().iter().map(|t| t.name.as_str()).collect();
        return Err(AdminError::new(Code::RequestInvalidField, format!("tier {:?} is not one of {known:?}", req.tier)));
    }
    let cash = match &req.cash {
        None => 0,
        Some(v) => {
            let text = match v {
                Json::String(s) => s.clone(),
                Json::Number(n) => n.to_string(),
                _ => return Err(AdminError::new(Code::RequestInvalidField, "cash must be a decimal string or number")),
            };
            match parse_decimal(text.as_bytes(), MONEY_DECIMALS) {
                Ok(c) if c >= 0 => c,
                Ok(c) if c > MAX_START_CASH => {
                    return Err(AdminError::new(Code::RequestInvalidNumber, "cash must be at most 10000000000"))
                }
                Ok(_) => return Err(AdminError::new(Code::RequestInvalidNumber, "cash must not be negative")),
                Err(e) => {
                    return Err(AdminError::new(Code::RequestInvalidNumber, format!("cash {text} {}", e.describe())))
                }
            }
        }
    };
    let overrides = match &req.limits {
        None | Some(Json::Null) => LimitOverrides::default(),
        Some(v) => parse_limit_overrides(v).map_err(|m| AdminError::new(Code::RequestInvalidField, m))?,
    };
    let id = node.open_account(name, &req.tier, cash, overrides, now)?;
    Ok(admin_account_json(node, id))
}

fn admin_create_key(node: &mut Node, account: AccountId, body: &[u8], now: Nanos) -> Result<Json, AdminError> {
    let req: NewKey = parse_body(body)?;
    let mut roles = Roles::default();
    for r in &req.roles {
        match r.as_str() {
            "feed" => roles.feed = true,
            "trade" => {}
            other => {
                return Err(AdminError::new(
                    Code::RequestInvalidField,
                    format!("role {other:?} is not one of [\"trade\", \"feed\"]"),
                ))
            }
        }
    }
    let named = node.cluster.as_ref().map(|c| c.node_id().to_string());
    let key = generate_key_of(named.as_deref())
        .map_err(|e| AdminError::new(Code::Internal, format!("no randomness: {e}")))?;
    let id = node.add_key(account, hash_key(key.as_bytes()), roles, now)?;
    Ok(json!({"key_id": id.0, "key": key, "account_id": account.0, "roles": roles_json(roles)}))
}

fn admin_set_limits(node: &mut Node, account: AccountId, body: &[u8], now: Nanos) -> Result<Json, AdminError> {
    let v: Json = parse_body(body)?;
    let v = match v.as_object() {
        Some(o) if o.len() == 1 && o.contains_key("limits") => o["limits"].clone(),
        _ => v,
    };
    let overrides = parse_limit_overrides(&v).map_err(|m| AdminError::new(Code::RequestInvalidField, m))?;
    let r = node.engine.set_limits(account, overrides, now);
    node.after_command();
    r.map_err(|r| AdminError::from(ApiError::reject(r)))?;
    Ok(admin_account_json(node, account))
}

fn admin_account_json(node: &Node, id: AccountId) -> Json {
    let Some(a) = node.engine.account(id) else { return Json::Null };
    let mut out = Vec::new();
    render::account(&mut Writer::new(&mut out), &node.engine, a);
    let mut v: Json = serde_json::from_slice(&out).unwrap_or_default();
    let keys: Vec<Json> = a
        .keys
        .iter()
        .filter_map(|k| node.engine.key(*k))
        .map(|k| json!({"key_id": k.id.0, "roles": roles_json(k.roles), "revoked": k.revoked, "created_at": k.created_at}))
        .collect();
    v["keys"] = Json::Array(keys);
    v
}

fn admin_list_accounts(node: &Node) -> Json {
    let accounts: Vec<Json> = node.engine.accounts().iter().map(|a| admin_account_json(node, a.id)).collect();
    json!({ "accounts": accounts })
}

fn not_allowed(resp: &mut Response, allow: &'static str) -> Result<Json, AdminError> {
    resp.allow = Some(allow);
    Err(AdminError::new(Code::RouteMethodNotAllowed, "method not allowed here"))
}

fn roles_json(r: Roles) -> Json {
    if r.feed {
        json!(["trade", "feed"])
    } else {
        json!(["trade"])
    }
}
