"""Build the container image for real and check it, with Debian's podman (no Docker engine here).

Usage: python scripts/container_image.py [--keep]

Steps (issue 14, "The container image, built and run for real"):

1. Install podman, buildah, runc and debootstrap from Debian when they are missing (root only).
   runc, not crun: crun fails on these machines' hybrid cgroup layout.
2. A private CONTAINERS_CONF: podman's default ulimits are above what this VM lets a container
   set (runc answers EPERM from setrlimit), so they are lowered to values it accepts.
3. A Python 3.11 base image: `debootstrap --variant=minbase bookworm` plus Debian's python3,
   python3-venv, python3-pip and ca-certificates, imported with `podman import`. Reused while it
   exists (tag BASE_TAG); built once per machine otherwise.
4. `podman build --format docker` of the repository's Dockerfile on that base. The host's CA
   bundle is mounted into the build's RUN steps (pip may need it behind this network's proxy); it
   is never copied into the image.
5. Checks on the built image, run as the image says (no --user override): the process runs as
   UID 65532; the root filesystem is read-only and the only writes land in its two volumes; the
   HEALTHCHECK answers SERVING (polled with `podman healthcheck run`: there is no systemd timer
   here); a Verify from the host through a published loopback port accepts a token issued on the
   admin socket inside the container and refuses a forged one with the documented reason;
   `podman stop` exits 0 and so does the sidecar.

Downloads (apt, debootstrap, pip inside the build) are retried: the network here is shared.
Exit status 0 only when every check passed; each failed check is one line on stderr.
What this does not verify: the production base image (python:3.11-slim-bookworm pinned by
digest, CPython built by python.org under /usr/local) is replaced by Debian's python3 3.11;
the engine is podman with runc, not Docker/containerd.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_TAG = "localhost/authsidecar-base:bookworm-py311"
# One tag per run: concurrent runs (several checkouts on one machine) never swap images.
IMAGE_TAG = f"localhost/authsidecar:check-{uuid.uuid4().hex[:8]}"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
TOOLS = {"podman": "podman", "buildah": "buildah", "runc": "runc", "debootstrap": "debootstrap"}
# Written by podman itself for every container (bind mounts it manages), not by the image.
RUNTIME_PATHS = {
    "/etc",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/run",
    "/run/.containerenv",
}
DATA_DIR = "/var/lib/authsidecar"
RUN_DIR = "/run/authsidecar"


def _run(
    args: list[str], *, env: dict[str, str] | None = None, check: bool = True, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed argument lists built here, no shell
        args, env=env, check=check, capture_output=True, text=True, timeout=timeout
    )


def _podman() -> str:
    return shutil.which("podman") or "podman"


def _retry(what: str, args: list[str], env: dict[str, str], attempts: int = 3) -> None:
    for attempt in range(1, attempts + 1):
        done = _run(args, env=env, check=False, timeout=1800)
        if done.returncode == 0:
            return
        print(f"{what}: attempt {attempt} failed: {done.stderr.strip()[-400:]}", file=sys.stderr)
        time.sleep(5 * attempt)
    raise SystemExit(f"{what}: failed {attempts} times")


def ensure_tools(env: dict[str, str]) -> None:
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"missing {' '.join(missing)} and not root: apt-get install them first")
    apt_env = {**env, "DEBIAN_FRONTEND": "noninteractive"}
    _retry("apt-get update", ["apt-get", "update", "-q"], apt_env)
    _retry("apt-get install", ["apt-get", "install", "-y", "-q", *missing], apt_env)


def containers_conf(directory: Path) -> Path:
    """podman's defaults ask for RLIMIT_NPROC above what runc may set in this VM (EPERM).

    4096 processes is far more than one sidecar uses; nofile keeps the host's hard limit.
    """
    import resource

    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nproc = 4096 if nproc == resource.RLIM_INFINITY else min(nproc, 4096)
    nofile = 65536 if nofile == resource.RLIM_INFINITY else nofile
    conf = directory / "containers.conf"
    conf.write_text(
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
    )
    return conf


def ensure_base(env: dict[str, str], work: Path) -> None:
    if _run(["podman", "image", "exists", BASE_TAG], env=env, check=False).returncode == 0:
        return
    rootfs = work / "rootfs"
    packages = "python3,python3-venv,python3-pip,ca-certificates"
    for attempt in range(1, 4):
        shutil.rmtree(rootfs, ignore_errors=True)
        done = _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={packages}",
                "bookworm",
                str(rootfs),
                "http://deb.debian.org/debian",
            ],
            env=env,
            check=False,
            timeout=1800,
        )
        if done.returncode == 0:
            break
        print(f"debootstrap: attempt {attempt} failed: {done.stdout[-400:]}", file=sys.stderr)
        time.sleep(5 * attempt)
    else:
        raise SystemExit("debootstrap failed 3 times")
    # Package caches are not part of a base image.
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (rootfs / cache).glob("*"):
            if item.is_file():
                item.unlink()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)  # noqa: S603, S607
    imported = subprocess.run(  # noqa: S603 - fixed arguments
        [_podman(), "import", "--change", 'CMD ["/bin/bash"]', "-", BASE_TAG],
        stdin=tar.stdout,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    tar.wait()
    if imported.returncode != 0 or tar.returncode != 0:
        raise SystemExit(f"podman import failed: {imported.stderr.strip()[-400:]}")
    shutil.rmtree(rootfs, ignore_errors=True)


def build(env: dict[str, str]) -> None:
    args = ["podman", "build", "--format", "docker", "--build-arg", f"PYTHON_IMAGE={BASE_TAG}"]
    if HOST_CA.is_file():
        # A RUN-time mount only: nothing of it lands in a layer.
        args += ["-v", f"{HOST_CA}:{HOST_CA}:ro"]
    _retry("podman build", [*args, "-t", IMAGE_TAG, str(ROOT)], env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Checks:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.failures: list[str] = []
        suffix = uuid.uuid4().hex[:8]
        self.name = f"authsidecar-check-{suffix}"
        self.volumes = (f"authsidecar-data-{suffix}", f"authsidecar-run-{suffix}")
        self.port = _free_port()

    def check(self, ok: bool, what: str) -> None:
        print(("ok    " if ok else "FAIL  ") + what)
        if not ok:
            self.failures.append(what)

    def podman(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return _run(["podman", *args], env=self.env, check=check, timeout=120)

    def start(self) -> None:
        data, run = self.volumes
        self.podman(
            "run",
            "-d",
            "--name",
            self.name,
            "--read-only",
            "-v",
            f"{data}:{DATA_DIR}",
            "-v",
            f"{run}:{RUN_DIR}",
            # Inside its own network namespace the sidecar must listen beyond loopback; the port
            # is published on the host's loopback only.
            "-e",
            "AUTHSIDECAR_LISTEN__TCP=0.0.0.0:50051",
            "-e",
            "AUTHSIDECAR_LISTEN__ALLOW_NON_LOOPBACK=true",
            "-p",
            f"127.0.0.1:{self.port}:50051",
            IMAGE_TAG,
            check=True,
        )

    def wait_healthy(self, timeout_s: float = 90) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.podman("healthcheck", "run", self.name).returncode == 0:
                return True
            if self.podman("container", "exists", self.name).returncode != 0:
                return False
            time.sleep(1)
        return False

    def identity_and_filesystem(self) -> None:
        uid = self.podman("exec", self.name, "id", "-u").stdout.strip()
        self.check(uid == "65532", f"runs as UID 65532 (got {uid!r})")
        readonly = self.podman("inspect", self.name, "--format", "{{.HostConfig.ReadonlyRootfs}}")
        self.check(readonly.stdout.strip() == "true", "root filesystem is read-only")
        touched = self.podman("exec", self.name, "sh", "-c", "touch /opt/authsidecar/x")
        self.check(touched.returncode != 0, "a write outside the volumes is refused")
        wrote = self.podman(
            "exec", self.name, "sh", "-c", f"test -S {RUN_DIR}/auth.sock && ls {DATA_DIR}/keys"
        )
        self.check(
            wrote.returncode == 0 and bool(wrote.stdout.strip()),
            "the sidecar wrote its socket and dev key into its two directories",
        )
        changed = [
            line.split(maxsplit=1)[1]
            for line in self.podman("diff", self.name).stdout.splitlines()
            if line.strip()
        ]
        stray = [
            path
            for path in changed
            if path not in RUNTIME_PATHS and not path.startswith((DATA_DIR, RUN_DIR))
        ]
        self.check(not stray, f"no writes outside its two directories (changed: {changed})")

    def verify_from_host(self) -> None:
        issued = self.podman(
            "exec",
            self.name,
            "authsidecar",
            "token",
            "issue",
            "--sub",
            "image-check",
            "--aud",
            "api://check",
        )
        try:
            token = json.loads(issued.stdout)["access_token"]
        except (ValueError, KeyError):
            self.check(False, f"token issue on the admin socket (rc {issued.returncode})")
            return
        sys.path.insert(0, str(ROOT / "clients" / "python"))
        from authsidecar.client import AuthClient, TokenInvalidError

        with AuthClient(f"127.0.0.1:{self.port}", timeout_s=10) as client:
            claims = client.verify(token)
            self.check(
                claims.sub == "image-check", "Verify from the host through the published port"
            )
            forged = token[: token.rindex(".") + 1] + ("A" * 86)
            try:
                client.verify(forged)
            except TokenInvalidError as refused:
                self.check(refused.reason == "SIGNATURE_INVALID", "a forged token is refused")
            else:
                self.check(False, "a forged token is refused")

    def stop(self) -> None:
        stopped = self.podman("stop", "-t", "30", self.name)
        self.check(stopped.returncode == 0, "podman stop exits 0")
        code = self.podman("inspect", self.name, "--format", "{{.State.ExitCode}}").stdout.strip()
        self.check(code == "0", f"the sidecar exits 0 on SIGTERM (got {code!r})")

    def cleanup(self) -> None:
        self.podman("rm", "-f", self.name)
        self.podman("volume", "rm", "-f", *self.volumes)
        self.podman("rmi", "-f", IMAGE_TAG)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the container for inspection")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="authsidecar-image-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "CONTAINERS_CONF": str(containers_conf(work))}
        ensure_tools(env)
        ensure_base(env, work)
        build(env)
        checks = Checks(env)
        try:
            checks.start()
            checks.check(checks.wait_healthy(), "HEALTHCHECK answers SERVING")
            checks.identity_and_filesystem()
            checks.verify_from_host()
            checks.stop()
        finally:
            if not options.keep:
                checks.cleanup()
    for failure in checks.failures:
        print(f"container check failed: {failure}", file=sys.stderr)
    return 1 if checks.failures else 0


if __name__ == "__main__":
    sys.exit(main())
