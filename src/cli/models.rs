use std::path::PathBuf;

use clap::Subcommand;
use serde::Serialize;

use crate::features::{default_models_dir, DeviceSpec, Extractor, Manifest, Registry};

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List the extractors in the models directory, with their output dimensions.
    List {
        #[arg(long, env = "GAPMETER_MODELS_DIR")]
        models_dir: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only read the manifests: no sha256 check, no dimensions (fast).
        #[arg(long)]
        no_load: bool,
    },
}

/// One listed extractor: its manifest and what loading it showed.
#[derive(Debug, Serialize)]
struct Listed {
    #[serde(flatten)]
    manifest: Manifest,
    /// Per output, its per-image shape (without the batch dimension).
    #[serde(skip_serializing_if = "Option::is_none")]
    output_shapes: Option<Vec<(String, Vec<i64>)>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    feature_dim: Option<usize>,
    /// Why the model could not be loaded (bad sha256, missing file, wrong manifest).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn inspect(manifest: Manifest, load: bool) -> Listed {
    if !load {
        return Listed {
            manifest,
            output_shapes: None,
            feature_dim: None,
            error: None,
        };
    }
    // Dimensions are only known from a forward pass; the warm-up batch in Extractor::load gives them.
    match Extractor::load(manifest.clone(), DeviceSpec::Cpu) {
        Ok(x) => Listed {
            output_shapes: Some(
                x.output_shapes()
                    .map(|(n, s)| (n.to_string(), s.to_vec()))
                    .collect(),
            ),
            feature_dim: Some(x.feature_dim()),
            manifest,
            error: None,
        },
        Err(e) => Listed {
            manifest,
            output_shapes: None,
            feature_dim: None,
            error: Some(format!("{e:#}")),
        },
    }
}

fn dims_column(l: &Listed) -> String {
    match (&l.output_shapes, &l.error) {
        (Some(shapes), _) => shapes
            .iter()
            .map(|(n, s)| {
                let dims: Vec<String> = s.iter().map(i64::to_string).collect();
                format!("{n}:{}", dims.join("x"))
            })
            .collect::<Vec<_>>()
            .join(" "),
        (None, Some(_)) => "(not loadable, see below)".into(),
        (None, None) => l.manifest.outputs.join(","),
    }
}

pub fn run(cmd: ModelsCommand) -> anyhow::Result<()> {
    match cmd {
        ModelsCommand::List {
            models_dir,
            json,
            no_load,
        } => {
            let registry = Registry::new(models_dir.unwrap_or_else(default_models_dir));
            let (manifests, errors) = registry.list();
            let listed: Vec<Listed> = manifests
                .into_iter()
                .map(|m| inspect(m, !no_load))
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&listed)?);
            } else {
                println!("models in {}", registry.dir().display());
                println!(
                    "{:<34} {:<9} {:<14} {:<17} outputs (per-image shape)",
                    "id", "trained", "resize", "sha256"
                );
                for l in &listed {
                    let m = &l.manifest;
                    println!(
                        "{:<34} {:<9} {:<14} {:<17} {}",
                        m.id,
                        if m.trained { "trained" } else { "untrained" },
                        m.resize.as_str(),
                        &m.sha256[..16],
                        dims_column(l)
                    );
                }
            }
            for l in &listed {
                if let Some(e) = &l.error {
                    eprintln!("warning: {}: {e}", l.manifest.id);
                }
            }
            for e in errors {
                eprintln!("warning: {e}");
            }
            Ok(())
        }
    }
}
