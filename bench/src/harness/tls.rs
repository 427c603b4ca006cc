//! Throw-away certificates for TLS tests, made with the `openssl` command.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA and a server certificate for 127.0.0.1 signed by it, as PEM files.
pub struct TestCertificates {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The directory, which also holds the CA's key (`ca.key`) for [`make_client`].
    pub dir: PathBuf,
}

/// A client certificate (for mTLS) with common name `name`, signed by `ca`'s CA: its
/// certificate and key files.
pub fn make_client(ca: &TestCertificates, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let stem = format!("client-{name}");
    sign(
        &ca.dir,
        &stem,
        &format!("/CN={name}"),
        &format!(
            "subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n"
        ),
    )?;
    Ok((
        ca.dir.join(format!("{stem}.pem")),
        ca.dir.join(format!("{stem}.key")),
    ))
}

/// A new P-256 key `<stem>.key` and its certificate `<stem>.pem` for `subject`, with
/// `extensions`, signed by the CA in `dir` (valid for two days).
fn sign(dir: &Path, stem: &str, subject: &str, extensions: &str) -> anyhow::Result<()> {
    let (key, csr, pem, ext) = (
        format!("{stem}.key"),
        format!("{stem}.csr"),
        format!("{stem}.pem"),
        format!("{stem}.ext"),
    );
    let mut request = vec!["req"];
    request.extend(EC);
    request.extend(["-keyout", &key, "-out", &csr, "-subj", subject]);
    openssl(dir, &request)?;
    std::fs::write(dir.join(&ext), extensions)?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    )
}

/// `openssl req` arguments for a new P-256 key without a passphrase.
const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Makes the files in `dir` (valid for two days, P-256 keys).
pub fn make(dir: &Path) -> anyhow::Result<TestCertificates> {
    std::fs::create_dir_all(dir)?;
    let mut ca = vec!["req", "-x509"];
    ca.extend(EC);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=tributary-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(dir, &ca)?;
    sign(
        dir,
        "server",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    Ok(TestCertificates {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        dir: dir.to_owned(),
    })
}
