//! Images without a registry.
//!
//! Two images: the **base** (Debian bookworm with redis-server and rabbitmq-server), made by
//! `docker/build-base.sh` from a debootstrap root filesystem and `docker import` (this machine
//! cannot pull, and the Debian packages are reachable); and the **app** image, the base plus the
//! `ts-server` and `ts-client` binaries that sit next to the running `tsc`, built through the
//! Engine API with `FROM base` (no pull). The app image carries a label with a hash of the
//! binaries, so it is rebuilt exactly when they change and reused otherwise.

use super::Progress;
use crate::error::{Error, Result};
use crate::runtime::cluster::ClusterConfig;
use bollard::query_parameters::BuildImageOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use std::hash::Hasher;
use std::path::PathBuf;
use std::time::Instant;

/// `docker/build-base.sh`, embedded so tsc works from any directory.
pub const BASE_BUILD_SCRIPT: &str = include_str!("../../docker/build-base.sh");
/// Label on the app image holding the hash of the binaries inside.
pub const BINARIES_LABEL: &str = "time-sync.binaries";
/// Binaries copied into the app image.
pub const BINARIES: [&str; 2] = ["ts-server", "ts-client"];

/// Directory holding `ts-server` and `ts-client`: `$TSC_BIN_DIR`, else next to this executable.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("TSC_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("current executable", e))?;
    Ok(exe.parent().map(PathBuf::from).unwrap_or_default())
}

/// Path of one of the binaries, checked to exist.
pub fn binary(name: &str) -> Result<PathBuf> {
    let p = bin_dir()?.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::Runtime(format!(
            "{} not found; build it (`cargo build --release`) or set TSC_BIN_DIR",
            p.display()
        )))
    }
}

fn binaries_hash() -> Result<String> {
    let mut h = std::hash::DefaultHasher::new();
    for name in BINARIES {
        let p = binary(name)?;
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        h.write(&bytes);
    }
    Ok(format!("{:016x}", h.finish()))
}

async fn image_label(docker: &Docker, image: &str, label: &str) -> Option<Option<String>> {
    let info = docker.inspect_image(image).await.ok()?;
    Some(
        info.config
            .and_then(|c| c.labels)
            .and_then(|l| l.get(label).cloned()),
    )
}

/// Makes sure the base and app images exist and the app image holds the current binaries.
pub async fn ensure_images(docker: &Docker, cfg: &ClusterConfig, p: Progress<'_>) -> Result<()> {
    let base = &cfg.docker.base_image;
    if docker.inspect_image(base).await.is_err() {
        p(&format!(
            "Building base image {base} from Debian packages (debootstrap; about a minute, once)..."
        ));
        let t = Instant::now();
        build_base(base).await?;
        p(&format!(
            "Base image {base} built in {:.0}s",
            t.elapsed().as_secs_f64()
        ));
    }
    let hash = binaries_hash()?;
    let image = &cfg.docker.image;
    if image_label(docker, image, BINARIES_LABEL).await == Some(Some(hash.clone())) {
        p(&format!("Image {image} is up to date"));
        return Ok(());
    }
    p(&format!("Building image {image} (FROM {base}, no pull)..."));
    let t = Instant::now();
    let context = build_context(base, &hash)?;
    let opts = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(image)
        .rm(true)
        .forcerm(true)
        .build();
    let mut stream = docker.build_image(opts, None, Some(bollard::body_full(context.into())));
    while let Some(item) = stream.next().await {
        let info = item?;
        if let Some(err) = info.error_detail.and_then(|d| d.message) {
            return Err(Error::Runtime(format!("building {image}: {err}")));
        }
    }
    p(&format!(
        "Image {image} built in {:.1}s",
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

async fn build_base(name: &str) -> Result<()> {
    let script = std::env::temp_dir().join(format!("ts-build-base-{}.sh", std::process::id()));
    std::fs::write(&script, BASE_BUILD_SCRIPT).map_err(|e| Error::io(&script, e))?;
    let status = tokio::process::Command::new("bash")
        .arg(&script)
        .arg(name)
        .status()
        .await
        .map_err(|e| Error::io("bash", e));
    let _ = std::fs::remove_file(&script);
    if status?.success() {
        Ok(())
    } else {
        Err(Error::Runtime(format!(
            "building the base image {name} failed (see the lines above; docker/build-base.sh)"
        )))
    }
}

/// A tar build context: a Dockerfile and the binaries.
fn build_context(base: &str, hash: &str) -> Result<Vec<u8>> {
    let dockerfile = format!(
        "FROM {base}\nCOPY ts-server ts-client /usr/local/bin/\nLABEL {BINARIES_LABEL}=\"{hash}\"\n"
    );
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "Dockerfile", dockerfile.as_bytes())
        .map_err(|e| Error::io("Dockerfile", e))?;
    for name in BINARIES {
        // Plain entries from the bytes: the tar crate writes freshly linked binaries as GNU
        // sparse entries, which the Engine's build endpoint rejects ("header type 83").
        let p = binary(name)?;
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes.as_slice())
            .map_err(|e| Error::io(&p, e))?;
    }
    tar.into_inner().map_err(|e| Error::io("build context", e))
}
