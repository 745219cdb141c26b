//! `egress-agent check`: what this kernel offers and what really attaches.
use clap::Args;
use serde::Serialize;

use super::args::SessionArgs;
use crate::{
    attribution::kube::KubeIndex,
    errors::Chain,
    kernel::{
        self, ProgramStatus, loader,
        offsets::{self, Btf, TraceFs},
    },
    session::{SessionOptions, Switch},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = CheckFormat::Table)]
    pub output: CheckFormat,
    #[command(flatten)]
    pub session: SessionArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
pub struct Item {
    pub check: String,
    pub status: Status,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    pub ok: bool,
    pub checks: Vec<Item>,
    pub programs: Vec<ProgramStatus>,
}

fn item(check: &str, status: Status, detail: impl Into<String>) -> Item {
    Item { check: check.to_string(), status, detail: detail.into() }
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Kubernetes connectivity as `run` would use it (`--kube`).
async fn kube_item(opts: &SessionOptions) -> Item {
    let wanted = match opts.kube {
        Switch::Off => return item("kubernetes", Status::Ok, "off (--kube=false)"),
        Switch::Auto if !opts.kube_wanted() => {
            return item(
                "kubernetes",
                Status::Ok,
                "off: not in a cluster and no --kubeconfig (pods named from cgroups only)",
            );
        }
        Switch::On => Status::Fail,
        Switch::Auto => Status::Warn,
    };
    match KubeIndex::check_access(&opts.kube_options()).await {
        Ok(detail) => item("kubernetes", Status::Ok, detail),
        Err(e) => item("kubernetes", wanted, Chain(&e).to_string()),
    }
}

pub async fn report(args: &CheckArgs) -> Report {
    let mut checks = Vec::new();
    let caps = loader::effective_caps();
    let missing = loader::missing_caps(caps);
    checks.push(if missing.is_empty() {
        item("privileges", Status::Ok, format!("CapEff {caps:#x}"))
    } else {
        item("privileges", Status::Fail, format!("missing {}", missing.join(", ")))
    });
    checks.push(if loader::object_present() {
        item("ebpf object", Status::Ok, "embedded")
    } else {
        item("ebpf object", Status::Fail, "built with AYA_BUILD_SKIP: no kernel programs")
    });
    let tracefs = TraceFs::locate();
    match &tracefs {
        Ok(t) => checks.push(item("tracefs", Status::Ok, t.root.display().to_string())),
        Err(e) => checks.push(item("tracefs", Status::Fail, e.to_string())),
    }
    let btf = Btf::from_sys_fs();
    // The optional conntrack kprobe: where its layout comes from (when it
    // does not resolve, its program line says why it is skipped).
    if let (Ok(t), Ok(b)) = (&tracefs, &btf)
        && let Ok(plan) = offsets::conntrack::plan(&t.root, Some(b))
    {
        checks.push(item("conntrack kprobe offsets", Status::Ok, plan.describe()));
    }
    match btf {
        Ok(btf) => {
            let (k, problems) = offsets::kernel_offsets(&btf);
            checks.push(if problems.is_empty() {
                item(
                    "btf",
                    Status::Ok,
                    format!(
                        "sock.sk_err@{} sock_common.skc_net@{} net.ns.inum@{}",
                        k.sock_sk_err, k.sock_skc_net, k.net_ns_inum
                    ),
                )
            } else {
                item("btf", Status::Warn, problems.join("; "))
            });
        }
        Err(e) => checks.push(item(
            "btf",
            Status::Warn,
            format!("{}: errno falls back on tracepoint evidence, netns unknown", Chain(&e)),
        )),
    }
    let mut programs = Vec::new();
    let config = match args.session.load_config() {
        Ok(c) => {
            if let Some(c) = &c {
                let hops = &c.chain.hops;
                checks.push(item(
                    "config",
                    Status::Ok,
                    format!(
                        "chain of {} hops: {}",
                        hops.len(),
                        hops.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(" -> ")
                    ),
                ));
            }
            c
        }
        Err(e) => {
            checks.push(item("config", Status::Fail, Chain(&e).to_string()));
            None
        }
    };
    let opts = args.session.options(config, false);
    match kernel::load(&opts.load_options()) {
        Ok(p) => {
            checks.push(item("load", Status::Ok, "object loaded; ring buffer created"));
            programs = p.programs;
        }
        Err(e) => checks.push(item("load", Status::Fail, e.to_string())),
    }
    checks.push(kube_item(&opts).await);
    for p in &programs {
        if !p.attached && !p.required && !p.standby {
            checks.push(item(
                &format!("program {}", p.program),
                Status::Warn,
                format!("skipped: {}", p.error.as_deref().unwrap_or("?")),
            ));
        }
    }
    let ok = !checks.iter().any(|c| c.status == Status::Fail);
    Report { kernel: kernel_release(), ok, checks, programs }
}

pub async fn check(args: CheckArgs) -> anyhow::Result<bool> {
    let r = report(&args).await;
    match args.output {
        CheckFormat::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        CheckFormat::Table => {
            println!("kernel {}", r.kernel);
            println!("{:<34} {:<6} DETAIL", "CHECK", "STATUS");
            for c in &r.checks {
                println!("{:<34} {:<6} {}", c.check, status(c.status), c.detail);
            }
            println!();
            println!(
                "{:<22} {:<42} {:<9} {:<11} ROLE / WHY NOT",
                "PROGRAM", "HOOK", "ATTACHED", "INSNS"
            );
            for p in &r.programs {
                let why = match p.error.as_deref() {
                    None => p.role.to_string(),
                    Some(e) if p.standby => format!("{e} (role: {})", p.role),
                    Some(e) => format!("{e} (lost: {})", p.role),
                };
                let attached = if p.attached {
                    "yes"
                } else if p.standby {
                    "standby"
                } else {
                    "no"
                };
                println!(
                    "{:<22} {:<42} {:<9} {:<11} {}",
                    p.program,
                    p.hook,
                    attached,
                    insns(p),
                    why
                );
            }
            println!();
            println!(
                "{}",
                if r.ok {
                    "minimum set OK: the agent can run here"
                } else {
                    "FAIL: the agent cannot run here"
                }
            );
        }
    }
    Ok(r.ok)
}

/// Verifier-processed instructions where the kernel reports them (5.16+),
/// else the translated length marked `x`; `-` when not loaded.
fn insns(p: &ProgramStatus) -> String {
    match (p.verified_insns, p.xlated_insns) {
        (Some(v), _) => v.to_string(),
        (None, Some(x)) => format!("{x}x"),
        (None, None) => "-".to_string(),
    }
}

fn status(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::Warn => "warn",
        Status::Fail => "FAIL",
    }
}
