//! The command line: `serve`, `migrate`, `check`, `import`, `segments`,
//! `campaigns`, `operators`, `demo`.

use crate::app::Application;
use crate::config::Config;
use crate::preview::{self, PreviewFormat};
use crate::progress::BarProgress;
use anyhow::Context;
use clap::{Parser, Subcommand};
use renkei_core::{Clock, SystemClock};
use renkei_ingest::import::{self, ImportError};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Parser)]
#[command(name = "renkei", version, about = "Segment-driven messaging engine for LINE Official Accounts")]
pub struct Cli {
    /// Config file (default: ./renkei.toml when present, else built-in defaults).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: API, webhook, evaluator, scheduler, dispatcher (roles in config).
    Serve {
        /// Do not apply migrations on start (overrides database.migrate_on_start).
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply pending database migrations.
    Migrate,
    /// Validate the configuration (exit 1 with one line per problem).
    Check,
    /// Import members or events from a file.
    Import {
        #[command(subcommand)]
        what: ImportWhat,
    },
    /// Inspect segments.
    Segments {
        #[command(subcommand)]
        what: SegmentsCommand,
    },
    /// Inspect campaigns.
    Campaigns {
        #[command(subcommand)]
        what: CampaignsCommand,
    },
    /// The LINE platform simulator on its own (for tests and local development).
    LineSim {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8081")]
        bind: std::net::SocketAddr,
    },
    /// Manage the dashboard's operators (who may sign in at /dashboard/login).
    Operators {
        #[command(subcommand)]
        what: OperatorsCommand,
    },
    /// A self-contained tour on a temporary SQLite database.
    Demo {
        /// Keep serving after the tour until Ctrl-C, to try the API by hand.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum OperatorsCommand {
    /// Adds an operator. The password is read from stdin (first line) when
    /// stdin is not a terminal; otherwise, or when that line is empty, one
    /// is generated and printed once.
    Add {
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// Lists the operators and their roles.
    List,
    /// Removes an operator (its sessions end).
    Remove { name: String },
    /// Changes an operator's role.
    SetRole {
        name: String,
        #[arg(value_enum)]
        role: RoleArg,
    },
}

/// An operator's role: viewers read; editors also pause and resume
/// campaigns; admins also manage operators.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    Viewer,
    Editor,
    Admin,
}

impl From<RoleArg> for renkei_store::OperatorRole {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Viewer => Self::Viewer,
            RoleArg::Editor => Self::Editor,
            RoleArg::Admin => Self::Admin,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ImportWhat {
    /// Members from .csv (typed headers like points:number) or .ndjson.
    Members { file: PathBuf },
    /// Events from .ndjson, one event per line as in POST /v1/events.
    Events { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum SegmentsCommand {
    /// A segment's members at an instant, evaluated from the stored facts
    /// (stored memberships are not read; nothing is written).
    Preview {
        /// Segment id, as in its YAML file.
        id: String,
        /// The instant to evaluate at, RFC 3339 with an offset (default: now).
        #[arg(long, value_name = "RFC3339", value_parser = preview::parse_at)]
        at: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long, value_enum, default_value_t = PreviewFormat::Table)]
        format: PreviewFormat,
    },
}

#[derive(Debug, Subcommand)]
pub enum CampaignsCommand {
    /// Who would get what at an instant, rendered, with skip reasons; sends
    /// and stores nothing. Segment-entry and scheduled campaigns: the members
    /// of their segment then; event campaigns: their queued reminders.
    DryRun {
        /// Campaign id, as in its YAML file.
        id: String,
        /// The instant to judge at, RFC 3339 with an offset (default: now).
        #[arg(long, value_name = "RFC3339", value_parser = preview::parse_at)]
        at: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long, value_enum, default_value_t = PreviewFormat::Table)]
        format: PreviewFormat,
    },
    /// The campaign's stats, as `GET /v1/campaigns/{id}/stats` shows them:
    /// deliveries, clicks, conversions, the holdout and the lift.
    Report {
        /// Campaign id, as in its YAML file.
        id: String,
        /// Judge only recipients exposed at or after this instant (RFC 3339).
        #[arg(long, value_name = "RFC3339", value_parser = preview::parse_at)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Judge only recipients exposed before this instant (RFC 3339).
        #[arg(long, value_name = "RFC3339", value_parser = preview::parse_at)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long, value_enum, default_value_t = PreviewFormat::Table)]
        format: PreviewFormat,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut log = config.log.clone();
    if matches!(cli.command, Command::Demo { .. }) {
        // The tour prints its own story; only problems belong in between.
        log.level = "warn".to_string();
    }
    crate::telemetry::init(&log);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    match cli.command {
        Command::Serve { no_migrate } => serve(config, clock, !no_migrate).await,
        Command::Migrate => {
            let store = config.database.connect().await.context("connecting to the database")?;
            store.migrate().await?;
            println!("migrations applied ({:?})", store.backend());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => Ok(check(&config)),
        Command::Segments { what: SegmentsCommand::Preview { id, at, format } } => {
            let at = at.unwrap_or_else(|| clock.now());
            segments_preview(&config, clock, &id, at, format).await
        }
        Command::Campaigns { what: CampaignsCommand::DryRun { id, at, format } } => {
            let at = at.unwrap_or_else(|| clock.now());
            campaigns_dry_run(&config, clock, &id, at, format).await
        }
        Command::Campaigns { what: CampaignsCommand::Report { id, from, to, format } } => {
            let period = renkei_api::campaigns::Period { from, to };
            campaigns_report(&config, clock, &id, period, format).await
        }
        Command::LineSim { bind } => line_sim(&config, bind).await,
        Command::Import { what } => run_import(config, clock, what).await,
        Command::Operators { what } => operators(&config, clock, what).await,
        Command::Demo { keep } => crate::demo::run(keep).await,
    }
}

/// Who the audit log names for changes made with `renkei operators`.
const CLI_OPERATOR: &str = "cli";

async fn operators(config: &Config, clock: Arc<dyn Clock>, what: OperatorsCommand) -> anyhow::Result<ExitCode> {
    use renkei_dashboard::manage;
    use std::io::IsTerminal;
    let store = config.database.connect().await.context("connecting to the database")?;
    store.migrate().await.context("applying migrations")?;
    let operators: &dyn renkei_store::OperatorStore = store.as_ref();
    let now = clock.now();
    let done = match what {
        OperatorsCommand::Add { name, role } => {
            let stdin = std::io::stdin();
            let mut given = String::new();
            if !stdin.is_terminal() {
                stdin.read_line(&mut given).context("reading the password from stdin")?;
            }
            let given = given.trim_end_matches(['\r', '\n']);
            // Nothing given (a terminal, or empty stdin): generated, and printed once below.
            let generated = given.is_empty();
            let password = if generated { renkei_dashboard::auth::generate_password() } else { given.to_string() };
            manage::add(operators, CLI_OPERATOR, &name, role.into(), &password, now).await.map(|()| {
                if generated {
                    println!("operator {name} added ({}); password (shown once): {password}", role_name(role));
                } else {
                    println!("operator {name} added ({})", role_name(role));
                }
            })
        }
        OperatorsCommand::List => {
            for operator in operators.operators().await? {
                println!("{}\t{}", operator.name, operator.role.as_str());
            }
            Ok(())
        }
        OperatorsCommand::Remove { name } => {
            manage::remove(operators, CLI_OPERATOR, &name, now).await.map(|()| println!("operator {name} removed"))
        }
        OperatorsCommand::SetRole { name, role } => manage::set_role(operators, CLI_OPERATOR, &name, role.into(), now)
            .await
            .map(|()| println!("operator {name} is now {}", role_name(role))),
    };
    match done {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) => {
            eprintln!("error: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn role_name(role: RoleArg) -> &'static str {
    renkei_store::OperatorRole::from(role).as_str()
}

/// Validates everything renkei loads (config, segments, campaigns,
/// templates, rich menus, reply rules); prints one `file:line:col: message` per problem.
fn check(config: &Config) -> ExitCode {
    let segments = match renkei_segments::SegmentSet::load_dir(&config.paths.segments) {
        Ok(segments) => segments,
        Err(diagnostics) => {
            for diagnostic in &diagnostics {
                eprintln!("{diagnostic}");
            }
            eprintln!("{} problem(s) in segments; nothing loaded", diagnostics.len());
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = crate::campaigns::global_policy(config) {
        eprintln!("{error}");
        return ExitCode::FAILURE;
    }
    if let Err(error) = crate::relay::relay_settings(config) {
        eprintln!("{error}");
        return ExitCode::FAILURE;
    }
    let loaded = crate::campaigns::load(config, &segments);
    let replies = crate::campaigns::load_replies(config, &segments);
    let (campaigns, rich_menus, replies) = match (loaded, replies) {
        (Ok((campaigns, rich_menus)), Ok(replies)) => (campaigns, rich_menus, replies),
        (loaded, replies) => {
            let mut diagnostics = loaded.err().unwrap_or_default();
            diagnostics.extend(replies.err().unwrap_or_default());
            diagnostics.sort();
            for diagnostic in &diagnostics {
                eprintln!("{diagnostic}");
            }
            eprintln!("{} problem(s); nothing loaded", diagnostics.len());
            return ExitCode::FAILURE;
        }
    };
    let replies_count = replies.len();
    let settings = crate::campaigns::link_keys(config, &campaigns)
        .and_then(|keys| crate::campaigns::replies(config, replies, keys));
    if let Err(error) = settings {
        eprintln!("{error}");
        return ExitCode::FAILURE;
    }
    println!(
        "config ok; {} segments in {}, {} campaigns in {}, {} rich-menu rules in {}, {} reply rules in {}, {} webhook relay targets (reply_owner {})",
        segments.len(),
        config.paths.segments.display(),
        campaigns.len(),
        config.paths.campaigns.display(),
        rich_menus.rules.len(),
        config.paths.rich_menus.display(),
        replies_count,
        config.paths.replies.display(),
        config.webhook.relay.len(),
        config.webhook.reply_owner,
    );
    ExitCode::SUCCESS
}

/// The segments and campaigns, when they load and `id` is one of the
/// campaigns; else the problem is printed.
fn load_campaign(config: &Config, id: &str) -> Option<(renkei_segments::SegmentSet, renkei_campaigns::CampaignSet)> {
    let loaded = crate::app::load_segments(&config.paths.segments)
        .and_then(|segments| crate::campaigns::load_or_explain(config, &segments).map(|c| (segments, c)));
    let (segments, (campaigns, _rich_menus)) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("{error}");
            return None;
        }
    };
    if campaigns.get(id).is_none() {
        let known: Vec<&str> = campaigns.iter().map(|c| c.id.as_str()).collect();
        let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
        eprintln!("error: unknown campaign `{id}` in {} (known: {known})", config.paths.campaigns.display());
        return None;
    }
    Some((segments, campaigns))
}

async fn campaigns_report(
    config: &Config,
    clock: Arc<dyn Clock>,
    id: &str,
    period: renkei_api::campaigns::Period,
    format: PreviewFormat,
) -> anyhow::Result<ExitCode> {
    let Some((_segments, campaigns)) = load_campaign(config, id) else { return Ok(ExitCode::FAILURE) };
    let campaign = campaigns.get(id).context("campaign")?;
    let store = config.database.connect().await.context("connecting to the database")?;
    store.migrate().await.context("applying migrations")?;
    let stats = renkei_api::campaigns::campaign_stats(
        &renkei_api::CampaignsStore::of(&store),
        campaign,
        clock.now(),
        config.timezone.0,
        period,
    )
    .await
    .context("reading the campaign's stats")?;
    match format {
        PreviewFormat::Json => println!("{}", serde_json::to_string_pretty(&stats).unwrap_or_default()),
        PreviewFormat::Table => print!("{}", crate::report::render(&stats)),
    }
    Ok(ExitCode::SUCCESS)
}

async fn campaigns_dry_run(
    config: &Config,
    clock: Arc<dyn Clock>,
    id: &str,
    at: chrono::DateTime<chrono::Utc>,
    format: PreviewFormat,
) -> anyhow::Result<ExitCode> {
    let Some((segments, campaigns)) = load_campaign(config, id) else { return Ok(ExitCode::FAILURE) };
    let global = match crate::campaigns::global_policy(config) {
        Ok(global) => global,
        Err(error) => {
            eprintln!("{error}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let store = config.database.connect().await.context("connecting to the database")?;
    store.migrate().await.context("applying migrations")?;
    let engine = renkei_evaluator::MembershipEngine::new(
        renkei_evaluator::EngineStore::of(&store),
        Arc::new(segments),
        clock,
        config.timezone.0,
    );
    let rows = renkei_scheduler::dry_run(
        &renkei_scheduler::DryRunStore::of(&store),
        &engine,
        &campaigns,
        id,
        at,
        &global,
        &config.server.public_base_url,
    )
    .await
    .context("dry run")?;
    let send = rows.iter().filter(|r| r.decision == "send").count();
    let defer = rows.iter().filter(|r| r.decision == "defer").count();
    let mut skips: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for row in rows.iter().filter(|r| r.decision == "skip") {
        *skips.entry(row.detail.as_deref().unwrap_or("unknown")).or_default() += 1;
    }
    match format {
        PreviewFormat::Json => {
            let body = serde_json::json!({
                "campaign": id,
                "at": at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                "send": send,
                "defer": defer,
                "skip": skips,
                "recipients": rows,
            });
            println!("{}", serde_json::to_string_pretty(&body).unwrap_or_default());
        }
        PreviewFormat::Table => {
            println!(
                "campaign {id} at {}: {} recipient(s): {send} send, {defer} deferred, {} skipped {skips:?}",
                at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                rows.len(),
                rows.len() - send - defer
            );
            for row in &rows {
                let who = row.line_user_id.as_deref().unwrap_or("-");
                let member = row.member_id.as_deref().unwrap_or("-");
                let detail = row.detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default();
                let alt = row.messages.get(0).and_then(|m| m.get("altText")).and_then(|a| a.as_str()).unwrap_or("");
                println!("{who}  {member:<12} {}{detail}  {alt}", row.decision);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn segments_preview(
    config: &Config,
    clock: Arc<dyn Clock>,
    id: &str,
    at: chrono::DateTime<chrono::Utc>,
    format: PreviewFormat,
) -> anyhow::Result<ExitCode> {
    let segments = match crate::app::load_segments(&config.paths.segments) {
        Ok(segments) => Arc::new(segments),
        Err(error) => {
            eprintln!("{error}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let Some(segment) = segments.segment(id) else {
        let known: Vec<&str> = segments.ids().collect();
        let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
        eprintln!("error: unknown segment `{id}` in {} (known: {known})", config.paths.segments.display());
        return Ok(ExitCode::FAILURE);
    };
    let name = segment.name.clone();
    let store = config.database.connect().await.context("connecting to the database")?;
    store.migrate().await.context("applying migrations")?;
    let engine = renkei_evaluator::MembershipEngine::new(
        renkei_evaluator::EngineStore::of(&store),
        segments,
        clock,
        config.timezone.0,
    );
    let members = engine.preview(id, at).await.context("evaluating the segment")?;
    print!("{}", preview::render(id, &name, at, &members, format));
    Ok(ExitCode::SUCCESS)
}

async fn line_sim(config: &Config, bind: std::net::SocketAddr) -> anyhow::Result<ExitCode> {
    let token = match config.line.channel_access_token.expose() {
        "" => "sim-channel-access-token".to_string(),
        token => token.to_string(),
    };
    let secret = match config.line.channel_secret.expose() {
        "" => "sim-channel-secret".to_string(),
        secret => secret.to_string(),
    };
    let sim_config = renkei_line_sim::SimConfig {
        channel_access_tokens: vec![token],
        channel_secret: secret,
        webhook_url: Some(format!("{}/webhook/line", config.server.public_base_url.trim_end_matches('/'))),
        ..Default::default()
    };
    println!("LINE simulator on http://{bind}; webhooks go to {}/webhook/line", config.server.public_base_url);
    println!("point renkei at it with RENKEI_LINE__API_BASE_URL=http://{bind}");
    renkei_line_sim::run(bind, sim_config).await?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: Config, clock: Arc<dyn Clock>, migrate: bool) -> anyhow::Result<ExitCode> {
    let store = config.database.connect().await.context("connecting to the database")?;
    if migrate && config.database.migrate_on_start {
        store.migrate().await.context("applying migrations")?;
    }
    if config.server.api_keys.is_empty() {
        tracing::warn!("server.api_keys is empty: every /v1 request will be refused");
    }
    let app = Application::build(&config, store, clock).await?;
    tracing::info!(addr = %app.local_addr(), "renkei listening");
    app.run_until_stopped().await?;
    Ok(ExitCode::SUCCESS)
}

async fn run_import(config: Config, clock: Arc<dyn Clock>, what: ImportWhat) -> anyhow::Result<ExitCode> {
    let store = config.database.connect().await.context("connecting to the database")?;
    store.migrate().await.context("applying migrations")?;
    let progress = Arc::new(BarProgress::new());
    let result = match &what {
        ImportWhat::Members { file } => import::import_members(store, file, progress, clock.now()).await.map(|o| {
            format!(
                "{}: {} created, {} updated, {} unchanged, {} linked",
                file.display(),
                o.created,
                o.updated,
                o.unchanged,
                o.linked
            )
        }),
        ImportWhat::Events { file } => {
            // Imported events count in the segments' running tallies, as served ones do.
            let segments = crate::app::load_segments(&config.paths.segments)?;
            store
                .maintain_tallies(Arc::new(segments.tallier()), clock.now())
                .await
                .context("building the running tallies of events")?;
            import::import_events(store, file, progress, clock.now())
                .await
                .map(|o| format!("{}: {} accepted, {} duplicates", file.display(), o.accepted, o.duplicates))
        }
    };
    match result {
        Ok(summary) => {
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Err(ImportError::Invalid(lines)) => {
            eprintln!("{lines}");
            Ok(ExitCode::FAILURE)
        }
        Err(other) => {
            eprintln!("error: {other}");
            Ok(ExitCode::FAILURE)
        }
    }
}
