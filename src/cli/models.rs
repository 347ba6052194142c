use std::path::PathBuf;

use clap::Subcommand;

use crate::features::{default_models_dir, Registry};

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List the extractors in the models directory.
    List {
        #[arg(long, env = "GAPMETER_MODELS_DIR")]
        models_dir: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ModelsCommand) -> anyhow::Result<()> {
    match cmd {
        ModelsCommand::List { models_dir, json } => {
            let registry = Registry::new(models_dir.unwrap_or_else(default_models_dir));
            let (manifests, errors) = registry.list();
            if json {
                println!("{}", serde_json::to_string_pretty(&manifests)?);
            } else {
                println!("models in {}", registry.dir().display());
                println!(
                    "{:<32} {:<24} {:<9} {:<14} sha256",
                    "id", "outputs", "trained", "resize"
                );
                for m in &manifests {
                    println!(
                        "{:<32} {:<24} {:<9} {:<14} {}",
                        m.id,
                        m.outputs.join(","),
                        m.trained,
                        m.resize.as_str(),
                        &m.sha256[..16]
                    );
                }
            }
            for e in errors {
                eprintln!("warning: {e}");
            }
            Ok(())
        }
    }
}
