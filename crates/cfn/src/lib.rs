//! CloudFormation rendering of a tokenfence spec.
//!
//! Props in, templates out: [`render`] turns a validated [`spec::Spec`] into one stack, or, when
//! one stack would exceed CloudFormation's quotas, the main stack (the platform and the
//! applications that fit) plus budget stacks linked by exports; [`render_after`] keeps every
//! application in the stack an earlier rendering put it in. Output is deterministic and logical
//! IDs derive from names only, so adding an application renames nothing.

mod app;
pub mod custom;
pub mod platform;
pub mod template;
pub mod workflow;
pub mod yaml;

use spec::Spec;
use spec::names::Names;
use thiserror::Error;

pub use app::{AppUnit, Link, render_app};
use template::{Template, quotas};

/// Errors of rendering.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RenderError {
    /// A stack would break a CloudFormation quota even after splitting.
    #[error("stack `{stack}` would have {what}; CloudFormation allows {limit}")]
    QuotaExceeded {
        /// The stack.
        stack: String,
        /// What is too large, with its figure.
        what: String,
        /// The quota.
        limit: String,
    },
}

/// Where rendering finds what it cannot know from the spec.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// Directory holding the Lambda artifacts (`provider/bootstrap`, `invoke/bootstrap`), as a
    /// path relative to the directory the templates are written to, for `aws cloudformation package`.
    pub code_dir: String,
}

/// What a stack is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackRole {
    /// Everything in one stack.
    Single,
    /// The shared platform of a split rendering; deploy it first.
    Platform,
    /// Applications' budgets, importing from the platform.
    Budgets,
}

/// One rendered stack.
#[derive(Debug, Clone)]
pub struct RenderedStack {
    /// The CloudFormation stack name to deploy it as.
    pub stack_name: String,
    /// The template's file name.
    pub file_name: String,
    /// What it is for.
    pub role: StackRole,
    /// The applications whose resources it holds.
    pub applications: Vec<String>,
    /// The template.
    pub template: Template,
    /// The template as YAML.
    pub yaml: String,
}

/// A rendered spec.
#[derive(Debug, Clone)]
pub struct Rendering {
    /// Stacks in deployment order.
    pub stacks: Vec<RenderedStack>,
}

impl Rendering {
    /// Whether the spec was split across stacks.
    pub fn is_split(&self) -> bool {
        self.stacks.len() > 1
    }
}

/// Which stack holds each application, stacks in order: what a rendering leaves for the next
/// one (`synth render` keeps it beside the templates) so that applications stay where they are.
pub type Placement = Vec<(String, Vec<String>)>;

impl Rendering {
    /// Where this rendering put each application.
    pub fn placement(&self) -> Placement {
        self.stacks
            .iter()
            .map(|s| (s.stack_name.clone(), s.applications.clone()))
            .collect()
    }
}

/// New applications fill a stack to this share of each quota (percent), leaving room for the
/// applications already in it to grow (alarms, models) without moving.
pub const FILL_PERCENT: usize = 80;

/// Renders `spec` as if for the first time.
pub fn render(spec: &Spec, opts: &RenderOptions) -> Result<Rendering, RenderError> {
    render_after(spec, opts, None)
}

/// Renders `spec`, keeping every application where `previous` placed it.
///
/// The main stack (named after the spec) always holds the platform, and the applications that
/// fit in it; the others go to budget stacks (`<name>-budgets-NNN`) that import the platform's
/// exports. An application that was placed before stays in its stack whatever happens to the
/// others (an application that moved would be refused by the provider, its old stack still owning
/// it); a new one goes to the first stack with room under [`FILL_PERCENT`] of the quotas, or to a
/// new budget stack. Crossing the single-stack threshold therefore renames and moves nothing.
pub fn render_after(
    spec: &Spec,
    opts: &RenderOptions,
    previous: Option<&Placement>,
) -> Result<Rendering, RenderError> {
    let names = Names::new(&spec.name);
    let main = names.stack();
    let mut platform = Template::new(String::new());
    platform::add_platform(&mut platform, spec, opts);

    // Sizes as a budget stack would hold them: imports are a little longer than `Ref`s, so they
    // bound the main stack's sizes too.
    let units = render_apps(spec, Link::Imported { prefix: &spec.name });

    struct Bin {
        name: String,
        resources: usize,
        outputs: usize,
        bytes: usize,
        apps: Vec<usize>,
    }
    let fill = |quota: usize| quota * FILL_PERCENT / 100;
    let fits = |bin: &Bin, unit: &AppUnit, bytes: usize| {
        bin.resources + unit.resources.len() <= fill(quotas::MAX_RESOURCES)
            && bin.outputs + unit.outputs.len() <= fill(quotas::MAX_OUTPUTS)
            && bin.bytes + bytes < fill(quotas::MAX_TEMPLATE_BYTES / 2)
    };
    let mut bins = vec![Bin {
        name: main.clone(),
        resources: platform.resources.len(),
        outputs: platform.outputs.len(),
        bytes: 0,
        apps: Vec::new(),
    }];
    let mut previous_stack: std::collections::HashMap<&str, usize> = Default::default();
    let mut numbered: Vec<(usize, &str, &Vec<String>)> = previous
        .into_iter()
        .flatten()
        .filter_map(|(stack, apps)| {
            budget_stack_number(&spec.name, stack).map(|n| (n, stack.as_str(), apps))
        })
        .collect();
    numbered.sort();
    for app in previous
        .into_iter()
        .flatten()
        .filter(|(stack, _)| *stack == main)
        .flat_map(|(_, apps)| apps)
    {
        previous_stack.insert(app, 0);
    }
    let mut next_number = 1;
    for (n, stack, apps) in numbered {
        bins.push(Bin {
            name: stack.to_string(),
            resources: 0,
            outputs: 0,
            bytes: 0,
            apps: Vec::new(),
        });
        for app in apps {
            previous_stack.insert(app, bins.len() - 1);
        }
        next_number = next_number.max(n + 1);
    }
    let place = |bin: &mut Bin, i: usize, unit: &AppUnit, bytes: usize| {
        bin.resources += unit.resources.len();
        bin.outputs += unit.outputs.len();
        bin.bytes += bytes;
        bin.apps.push(i);
    };
    let mut fresh = Vec::new();
    for (i, (unit, bytes)) in units.iter().enumerate() {
        match previous_stack.get(unit.app.as_str()) {
            Some(&b) => place(&mut bins[b], i, unit, *bytes),
            None => fresh.push(i),
        }
    }
    for i in fresh {
        let (unit, bytes) = &units[i];
        let b = match bins.iter().position(|bin| fits(bin, unit, *bytes)) {
            Some(b) => b,
            None => {
                bins.push(Bin {
                    name: names.budget_stack(next_number),
                    resources: 0,
                    outputs: 0,
                    bytes: 0,
                    apps: Vec::new(),
                });
                next_number += 1;
                bins.len() - 1
            }
        };
        place(&mut bins[b], i, unit, *bytes);
    }

    // The main stack's applications reference the platform in the same stack.
    let mut main_bin = bins.remove(0);
    main_bin.apps.sort_unstable();
    let budget_bins: Vec<Bin> = bins.into_iter().filter(|b| !b.apps.is_empty()).collect();
    let mut units: Vec<Option<AppUnit>> = units.into_iter().map(|(u, _)| Some(u)).collect();
    let mut main_apps = Vec::new();
    for &i in &main_bin.apps {
        let app = units[i].take().expect("placed once").app;
        add_unit(
            &mut platform,
            render_app(spec, &app, &spec.applications[&app], Link::Local),
        );
        main_apps.push(app);
    }
    platform.description = format!(
        "tokenfence stack `{}`: budget gateway for Amazon Bedrock and {} application(s){}",
        spec.name,
        main_apps.len(),
        if budget_bins.is_empty() {
            ""
        } else {
            "; budget stacks import its exports, deploy it first"
        }
    );
    let role = if budget_bins.is_empty() {
        StackRole::Single
    } else {
        StackRole::Platform
    };
    let mut stacks = vec![(main_bin.name, role, main_apps, platform)];
    for mut bin in budget_bins {
        bin.apps.sort_unstable();
        let mut t = Template::new(String::new());
        let mut apps = Vec::new();
        for i in bin.apps {
            let unit = units[i].take().expect("placed once");
            apps.push(unit.app.clone());
            add_unit(&mut t, unit);
        }
        stacks.push((bin.name, StackRole::Budgets, apps, t));
    }
    Ok(Rendering {
        stacks: finish_all(stacks)?,
    })
}

/// The number of a budget stack of the spec called `prefix`: `<prefix>-budgets-007` -> 7.
fn budget_stack_number(prefix: &str, stack: &str) -> Option<usize> {
    let n = stack.strip_prefix(prefix)?.strip_prefix("-budgets-")?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

/// Renders every application (with its size) on every core, in declaration order: packing needs
/// them in order, rendering them does not.
fn render_apps(spec: &Spec, link: Link<'_>) -> Vec<(AppUnit, usize)> {
    let apps: Vec<(&String, &spec::Application)> = spec.applications.iter().collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = apps.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = apps
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(app, application)| {
                            let unit = render_app(spec, app, application, link);
                            let bytes = unit.approx_bytes();
                            (unit, bytes)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("rendering an application does not panic"))
            .collect()
    })
}

/// Finishes stacks (quota checks, YAML) on every core, in order: serializing hundreds of
/// templates is most of a large rendering's time.
fn finish_all(
    stacks: Vec<(String, StackRole, Vec<String>, Template)>,
) -> Result<Vec<RenderedStack>, RenderError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = stacks.len().div_ceil(threads).max(1);
    let mut stacks = stacks.into_iter();
    let mut chunks: Vec<Vec<_>> = Vec::new();
    loop {
        let next: Vec<_> = stacks.by_ref().take(chunk).collect();
        if next.is_empty() {
            break;
        }
        chunks.push(next);
    }
    let finished: Vec<Result<Vec<RenderedStack>, RenderError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .into_iter()
                        .map(|(name, role, apps, t)| finish(name, role, apps, t))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rendering a stack does not panic"))
            .collect()
    });
    let mut out = Vec::new();
    for chunk in finished {
        out.extend(chunk?);
    }
    Ok(out)
}

fn add_unit(t: &mut Template, unit: AppUnit) {
    for (id, resource) in unit.resources {
        t.add(id, resource);
    }
    for (id, output) in unit.outputs {
        t.outputs.insert(id, output);
    }
}

fn finish(
    stack_name: String,
    role: StackRole,
    applications: Vec<String>,
    mut template: Template,
) -> Result<RenderedStack, RenderError> {
    if role == StackRole::Budgets {
        template.description = format!(
            "tokenfence budgets `{stack_name}`: {} application(s), {} to {}; imports from the platform stack",
            applications.len(),
            applications.first().map_or("", String::as_str),
            applications.last().map_or("", String::as_str)
        );
    }
    let quota = |what: String, limit: String| RenderError::QuotaExceeded {
        stack: stack_name.clone(),
        what,
        limit,
    };
    if template.resources.len() > quotas::MAX_RESOURCES {
        return Err(quota(
            format!("{} resources", template.resources.len()),
            format!("{}", quotas::MAX_RESOURCES),
        ));
    }
    if template.outputs.len() > quotas::MAX_OUTPUTS {
        return Err(quota(
            format!("{} outputs", template.outputs.len()),
            format!("{}", quotas::MAX_OUTPUTS),
        ));
    }
    let yaml = template.to_yaml();
    if yaml.len() > quotas::MAX_TEMPLATE_BYTES {
        return Err(quota(
            format!("a {}-byte template", yaml.len()),
            format!("{} bytes", quotas::MAX_TEMPLATE_BYTES),
        ));
    }
    Ok(RenderedStack {
        file_name: format!("{stack_name}.yaml"),
        stack_name,
        role,
        applications,
        template,
        yaml,
    })
}
