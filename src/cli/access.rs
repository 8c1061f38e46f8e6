//! `tokens create|list|revoke` and `whoami`.

use super::client::{connect, Failure};
use super::json::{emit, time_text};
use super::text::{ago, table};
use super::{HealthArgs, TokensAction, TokensArgs, WhoamiArgs};
use crate::grpc::pb;
use serde::Serialize;

pub(super) async fn tokens(args: TokensArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    match args.action {
        TokensAction::Create {
            name,
            role,
            prefixes,
            labels,
            expires,
            subject,
        } => {
            let role = role_of(&role)?;
            let expires = match expires {
                None => None,
                Some(after) => {
                    let micros = i64::try_from(after.as_micros()).unwrap_or(i64::MAX);
                    let at = crate::time::now_micros().saturating_add(micros);
                    Some(crate::grpc::timestamp::to_timestamp(at))
                }
            };
            let request = pb::CreateTokenRequest {
                name,
                bindings: vec![pb::Binding {
                    role: role.into(),
                    prefixes,
                    labels,
                }],
                expires,
                subject: subject.unwrap_or_default(),
            };
            let created = client.create_token(request).await?.into_inner();
            let token = created.token.unwrap_or_default();
            emit(
                &args.client,
                || {
                    if !token.subject.is_empty() {
                        return format!(
                            "created certificate grant {} for {} ({})",
                            token.name,
                            token.subject,
                            bindings_text(&token.bindings)
                        );
                    }
                    format!(
                        "{}\ncreated token {} ({}); the secret above is shown only now: store it in a secret manager",
                        created.secret,
                        token.name,
                        bindings_text(&token.bindings)
                    )
                },
                CreatedJson {
                    secret: &created.secret,
                    token: TokenJson::of(&token),
                },
            );
        }
        TokensAction::List => {
            let tokens = client
                .list_tokens(pb::ListTokensRequest {})
                .await?
                .into_inner()
                .tokens;
            match args.client.output {
                super::OutputFormat::Json => {
                    for token in &tokens {
                        emit(&args.client, String::new, TokenJson::of(token));
                    }
                }
                super::OutputFormat::Text => {
                    let rows: Vec<Vec<String>> = tokens
                        .iter()
                        .map(|t| {
                            vec![
                                t.name.clone(),
                                if t.subject.is_empty() {
                                    "token".into()
                                } else {
                                    format!("certificate {}", t.subject)
                                },
                                bindings_text(&t.bindings),
                                ago(&t.created),
                                if t.last_used.is_some() {
                                    ago(&t.last_used)
                                } else {
                                    "-".into()
                                },
                                if t.expires.is_some() {
                                    time_text(&t.expires)
                                } else {
                                    "never".into()
                                },
                                if t.revoked.is_some() {
                                    format!("revoked {}", ago(&t.revoked))
                                } else {
                                    "active".into()
                                },
                            ]
                        })
                        .collect();
                    println!(
                        "{}",
                        table(
                            &[
                                "NAME",
                                "FOR",
                                "ROLES",
                                "CREATED",
                                "LAST USED",
                                "EXPIRES",
                                "STATE"
                            ],
                            &rows
                        )
                    );
                }
            }
        }
        TokensAction::Revoke { name, reason } => {
            let revoked = client
                .revoke_token(pb::RevokeTokenRequest { name, reason })
                .await?
                .into_inner()
                .token
                .unwrap_or_default();
            emit(
                &args.client,
                || {
                    format!(
                        "revoked token {}: its requests and open watch streams fail from now on",
                        revoked.name
                    )
                },
                TokenJson::of(&revoked),
            );
        }
    }
    Ok(())
}

pub(super) async fn whoami(args: WhoamiArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let me = client.who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
    emit(
        &args.client,
        || {
            format!(
                "{} ({}): {}",
                me.principal,
                me.credential,
                bindings_text(&me.bindings)
            )
        },
        WhoamiJson {
            principal: &me.principal,
            credential: &me.credential,
            bindings: me.bindings.iter().map(BindingJson::of).collect(),
        },
    );
    Ok(())
}

fn role_of(raw: &str) -> Result<pb::Role, Failure> {
    Ok(match raw {
        "reader" => pb::Role::Reader,
        "agent" => pb::Role::Agent,
        "author" => pb::Role::Author,
        "deployer" => pb::Role::Deployer,
        "attester" => pb::Role::Attester,
        "approver" => pb::Role::Approver,
        "admin" => pb::Role::Admin,
        other => {
            return Err(Failure::usage(format!(
                "--role {other:?} is not a role; use one of reader, agent, author, deployer, attester, approver, admin"
            )))
        }
    })
}

fn role_name(raw: i32) -> &'static str {
    match pb::Role::try_from(raw) {
        Ok(pb::Role::Reader) => "reader",
        Ok(pb::Role::Agent) => "agent",
        Ok(pb::Role::Author) => "author",
        Ok(pb::Role::Deployer) => "deployer",
        Ok(pb::Role::Attester) => "attester",
        Ok(pb::Role::Approver) => "approver",
        Ok(pb::Role::Admin) => "admin",
        _ => "unknown",
    }
}

/// `deployer on support/ for label staging; reader on every prompt`.
fn bindings_text(bindings: &[pb::Binding]) -> String {
    let one = |b: &pb::Binding| {
        let mut text = role_name(b.role).to_string();
        if b.prefixes.is_empty() {
            text.push_str(" on every prompt");
        } else {
            text.push_str(&format!(" on {}", b.prefixes.join(", ")));
        }
        if !b.labels.is_empty() {
            text.push_str(&format!(" for label {}", b.labels.join(", ")));
        }
        text
    };
    bindings.iter().map(one).collect::<Vec<_>>().join("; ")
}

#[derive(Serialize)]
struct BindingJson<'a> {
    role: &'static str,
    prefixes: &'a [String],
    labels: &'a [String],
}

impl<'a> BindingJson<'a> {
    fn of(binding: &'a pb::Binding) -> Self {
        BindingJson {
            role: role_name(binding.role),
            prefixes: &binding.prefixes,
            labels: &binding.labels,
        }
    }
}

#[derive(Serialize)]
struct TokenJson<'a> {
    name: &'a str,
    /// Empty for a bearer token.
    subject: &'a str,
    bindings: Vec<BindingJson<'a>>,
    created: String,
    created_by: &'a str,
    last_used: String,
    expires: String,
    revoked: String,
}

impl<'a> TokenJson<'a> {
    fn of(token: &'a pb::TokenInfo) -> Self {
        TokenJson {
            name: &token.name,
            subject: &token.subject,
            bindings: token.bindings.iter().map(BindingJson::of).collect(),
            created: time_text(&token.created),
            created_by: &token.created_by,
            last_used: time_text(&token.last_used),
            expires: time_text(&token.expires),
            revoked: time_text(&token.revoked),
        }
    }
}

#[derive(Serialize)]
struct CreatedJson<'a> {
    secret: &'a str,
    token: TokenJson<'a>,
}

#[derive(Serialize)]
struct WhoamiJson<'a> {
    principal: &'a str,
    credential: &'a str,
    bindings: Vec<BindingJson<'a>>,
}

pub(super) async fn health(args: HealthArgs) -> Result<(), Failure> {
    let channel = super::client::channel(&args.client).await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: args.service.clone(),
        })
        .await?
        .into_inner()
        .status();
    let serving = status == tonic_health::pb::health_check_response::ServingStatus::Serving;
    let name = status.as_str_name();
    emit(
        &args.client,
        || name.to_string(),
        HealthJson {
            service: &args.service,
            status: name,
        },
    );
    if serving {
        Ok(())
    } else {
        Err(Failure {
            code: super::exit::REFUSED,
            message: format!("{:?} is {name}", args.service),
        })
    }
}

#[derive(Serialize)]
struct HealthJson<'a> {
    service: &'a str,
    status: &'static str,
}
