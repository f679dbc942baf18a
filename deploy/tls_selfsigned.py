"""Write a self-signed TLS certificate for nginx unless one is there already.

    python deploy/tls_selfsigned.py DIRECTORY [HOSTNAME ...]

docker-compose.yml runs this once (the `tls` service) so that nginx's TLS listener starts on a
fresh machine; browsers will warn about it. For a real deployment put your own `fullchain.pem`
and `privkey.pem` in that directory (the volume mounted at /etc/nginx/tls): they are never
overwritten. Uses `cryptography`, which the image already has.
"""

import datetime
import ipaddress
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DAYS = 365


def _names(hostnames: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def write_selfsigned(directory: Path, hostnames: list[str]) -> bool:
    """Write `fullchain.pem` and `privkey.pem`; False (and nothing written) if both exist."""
    cert_path, key_path = directory / "fullchain.pem", directory / "privkey.pem"
    if cert_path.exists() and key_path.exists():
        return False
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=DAYS))
        .add_extension(x509.SubjectAlternativeName(_names(hostnames)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return True


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    target = Path(sys.argv[1])
    made = write_selfsigned(target, sys.argv[2:] or ["localhost", "127.0.0.1"])
    print(f"{'wrote a self-signed certificate' if made else 'kept the certificate'} in {target}")
