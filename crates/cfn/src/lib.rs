//! CloudFormation rendering of a tokenfence spec.
//!
//! Props in, templates out: [`render`] turns a validated [`spec::Spec`] into one stack, or, when
//! one stack would exceed CloudFormation's quotas, a platform stack plus budget stacks linked by
//! exports. Output is deterministic and logical IDs derive from names only, so adding an
//! application renames nothing.

mod app;
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

/// Renders `spec`.
pub fn render(spec: &Spec, opts: &RenderOptions) -> Result<Rendering, RenderError> {
    let names = Names::new(&spec.name);

    let mut single = Template::new(format!(
        "tokenfence stack `{}`: budget gateway for Amazon Bedrock and {} application(s)",
        spec.name,
        spec.applications.len()
    ));
    platform::add_platform(&mut single, spec, opts);
    let platform_resources = single.resources.len();
    let platform_outputs = single.outputs.len();
    // Render applications for the single stack until they no longer fit: a spec that must be
    // split is then rendered once more for the split stacks, not twice in full.
    let mut units: Vec<AppUnit> = Vec::new();
    let (mut app_resources, mut app_outputs, mut app_bytes) = (0, 0, 0);
    let mut fits = true;
    for (app, a) in &spec.applications {
        let unit = render_app(spec, app, a, Link::Local);
        app_resources += unit.resources.len();
        app_outputs += unit.outputs.len();
        app_bytes += unit.approx_bytes();
        units.push(unit);
        fits = platform_resources + app_resources <= quotas::MAX_RESOURCES
            && platform_outputs + app_outputs <= quotas::MAX_OUTPUTS
            && app_bytes < quotas::MAX_TEMPLATE_BYTES / 2;
        if !fits {
            break;
        }
    }

    if fits {
        for unit in units {
            add_unit(&mut single, unit);
        }
        let stack = finish(
            names.stack(),
            StackRole::Single,
            spec.applications.keys().cloned().collect(),
            single,
        )?;
        return Ok(Rendering {
            stacks: vec![stack],
        });
    }
    drop(units);

    // Split: the platform alone, then applications packed in declaration order, so that adding
    // applications at the end of the spec moves none of the existing ones.
    let mut platform_only = Template::new(format!(
        "tokenfence platform `{}`: ledger, Lambdas, API and alerts shared by every budget stack",
        spec.name
    ));
    platform::add_platform(&mut platform_only, spec, opts);
    let mut stacks = vec![(
        names.platform_stack(),
        StackRole::Platform,
        Vec::new(),
        platform_only,
    )];

    let link = Link::Imported { prefix: &spec.name };
    let mut current: Option<(Template, Vec<String>, usize)> = None;
    for (unit, bytes) in render_apps(spec, link) {
        let app = &unit.app.clone();
        let full = current.as_ref().is_some_and(|(t, _, size)| {
            t.resources.len() + unit.resources.len() > quotas::MAX_RESOURCES
                || t.outputs.len() + unit.outputs.len() > quotas::MAX_OUTPUTS
                || size + bytes >= quotas::MAX_TEMPLATE_BYTES / 2
        });
        if full {
            let (t, apps, _) = current.take().expect("checked above");
            let n = stacks.len();
            stacks.push((names.budget_stack(n), StackRole::Budgets, apps, t));
        }
        let (t, apps, size) =
            current.get_or_insert_with(|| (Template::new(String::new()), Vec::new(), 0));
        add_unit(t, unit);
        apps.push(app.clone());
        *size += bytes;
    }
    if let Some((t, apps, _)) = current {
        let n = stacks.len();
        stacks.push((names.budget_stack(n), StackRole::Budgets, apps, t));
    }
    Ok(Rendering {
        stacks: finish_all(stacks)?,
    })
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
