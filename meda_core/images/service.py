"""The local image store: content-addressed blobs plus records; import, pull, push, remove."""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from meda_core.backends.roles import AgentBackend, ImageFiles, RegistryBackend, StorageBackend
from meda_core.errors import (
    Conflict,
    ImageExists,
    ImageNotFound,
    InvalidRequest,
    MedaError,
    UnsafeDisk,
    VMNotFound,
)
from meda_core.host.files import copy_sparse
from meda_core.host.locks import exclusive
from meda_core.images import diskprobe
from meda_core.images.blobs import BlobStore, sha256_file
from meda_core.inputs.names import parse_image_ref
from meda_core.inputs.references import check_allowed, parse_reference
from meda_core.models import VM, Image, VMState, chosen_port
from meda_core.state.operations import Progress, no_progress
from meda_core.state.store import StateStore

NO_IMAGE_HINT = (
    "import one with `meda images import NAME --kernel FILE --initrd FILE` "
    "(or `--disk FILE`), or pull one, and set MEDA_DEFAULT_IMAGE=NAME, or name an image "
    "in the request"
)
Backend = Callable[[], StorageBackend]
#: The storage backend of a given name (the one a VM's disk was made by).
NamedStorage = Callable[[str], StorageBackend]
Registry = Callable[[], RegistryBackend]
#: The selected agent backend, or None where no plugin offers one.
Agent = Callable[[], AgentBackend | None]


MAX_CHAIN = 32
#: A kernel and initramfs alone: the initramfs's /init runs, its output on the serial port.
KERNEL_ONLY_CMDLINE = "console=ttyS0"
NEEDS_CMDLINE = (
    "a kernel booted with a disk needs a command line that says where the root file system "
    "is: give --cmdline (cmdline), e.g. 'console=ttyS0 root=/dev/vda rw' for a disk that "
    "is one file system (as `meda images build` makes) or 'console=ttyS0 root=/dev/vda1 "
    "rw' for a partitioned one; without it the kernel stops in its initramfs"
)


def _checked_import(
    disk: Path | None,
    kernel: Path | None,
    initrd: Path | None,
    cmdline: str | None,
    ready_port: int | None,
) -> str | None:
    """The command line an import records, once its files and ready port are checked."""
    if disk is None and kernel is None:
        raise InvalidRequest("an image needs a disk, a kernel, or both")
    if initrd is not None and kernel is None:
        raise InvalidRequest("an initrd needs a kernel")
    if ready_port is not None and not 0 <= ready_port <= 65535:
        raise InvalidRequest(f"ready port {ready_port} is not 0 to 65535", ready_port=ready_port)
    if kernel is not None and not cmdline:
        if disk is not None:
            raise InvalidRequest(NEEDS_CMDLINE, flag="--cmdline")
        cmdline = KERNEL_ONLY_CMDLINE
    for path in (disk, kernel, initrd):
        if path is not None and not path.is_file():
            raise InvalidRequest(f"no such file: {path}", path=str(path))
    return cmdline


class ImageService:
    """Images are records in the state store whose files are blobs in ``MEDA_HOME/blobs``.

    Removing an image that a VM uses is refused (409): the VM's disk is backed by the
    image's disk blob and a VM started later still boots the image's kernel. Blobs that no
    image holds and no VM disk is backed by are removed with the image, or by prune.
    """

    def __init__(
        self,
        store: StateStore,
        home: Path,
        default_ref: str,
        storage: Backend,
        registry: Registry,
        disk_roots: tuple[Path, Path],
        storage_named: NamedStorage,
        probe_limits: diskprobe.ProbeLimits | None = None,
        allowed_registries: frozenset[str] = frozenset(),
        agent: Agent = lambda: None,
    ) -> None:
        self._store = store
        self._agent = agent
        self._storage_named = storage_named
        self._disk_roots = disk_roots  # where the disks meda boots may rest (diskprobe.roots)
        self._probe_limits = probe_limits or diskprobe.ProbeLimits()
        self._allowed_registries = allowed_registries
        self._home = home
        self._default_ref = default_ref
        self._storage = storage
        self._registry = registry
        self.blobs = BlobStore(home / "blobs")

    # ---- queries ----

    def list(self) -> list[Image]:
        return self._store.list_images()

    def get(self, ref: str) -> Image:
        name, tag = parse_image_ref(ref)
        image = self._store.get_image(name, tag)
        if image is None:
            raise ImageNotFound(f"image '{name}:{tag}' not found; {NO_IMAGE_HINT}", image=ref)
        return image

    def resolve(self, ref: str | None) -> Image:
        """The image a new VM uses: ``ref``, else the configured default image."""
        return self.get(ref or self._default_ref)

    def listing(self) -> builtins.list[tuple[Image, builtins.list[str]]]:
        """Every image with the names of the VMs that use it."""
        return [(image, self.users(image)) for image in self.list()]

    def users(self, image: Image) -> builtins.list[str]:
        """Names of the VMs created from ``image``."""
        return [vm.name for vm in self._store.list_vms() if vm.image == image.ref]

    # ---- local import ----

    def import_files(
        self,
        ref: str,
        disk: Path | None = None,
        kernel: Path | None = None,
        initrd: Path | None = None,
        cmdline: str | None = None,
        source: str | None = None,
        ready_port: int | None = None,
    ) -> Image:
        """Copy local files into the store as image ``ref`` (``ready_port``: the guest
        port that answers once it is ready; None or 0: none)."""
        name, tag = parse_image_ref(ref)
        cmdline = _checked_import(disk, kernel, initrd, cmdline, ready_port)
        self._refuse_existing(name, tag)
        staging = self.blobs.staging()
        try:
            # The copy is probed, not the original, which could change in between.
            staged = None
            if disk is not None:
                staged = staging / "disk"
                copy_sparse(disk, staged)
            files = ImageFiles(
                disk=staged,
                disk_format=self._probe(staged),
                kernel=kernel,
                initrd=initrd,
                cmdline=cmdline,
                ready_port=ready_port or None,
            )
            image = self._record(
                name, tag, self._adopt(files, copy=True, staged={"disk"}), source=source
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self._insert(image)

    def _refuse_existing(self, name: str, tag: str) -> None:
        if self._store.get_image(name, tag) is not None:
            raise ImageExists(f"image '{name}:{tag}' already exists", image=f"{name}:{tag}")

    def _insert(self, image: Image) -> Image:
        """Store a new image; one made meanwhile under its name wins (409)."""
        if not self._store.insert_image(image):
            raise ImageExists(f"image '{image.ref}' already exists", image=image.ref)
        return image

    def _probe(self, disk: Path | None) -> str | None:
        """The disk's format by meda's own probe; a disk that is neither a raw nor a
        standalone qcow2 disk is refused (whatever its sender said it is)."""
        return diskprobe.verify(disk, self._probe_limits) if disk is not None else None

    def _vetted(self, files: ImageFiles) -> ImageFiles:
        """``files`` with the disk format meda probed in place of the claimed one."""
        return dataclasses.replace(files, disk_format=self._probe(files.disk))

    def _adopt(
        self, files: ImageFiles, copy: bool, staged: frozenset[str] | set[str] = frozenset()
    ) -> ImageFiles:
        """Put the files into the blob store (copied, or moved when ``copy`` is False or
        the field is ``staged``, already a copy of meda's own)."""
        moved: dict[str, Path | None] = {}
        for field in ("disk", "kernel", "initrd"):
            path: Path | None = getattr(files, field)
            if path is None:
                moved[field] = None
            elif copy and field not in staged:
                moved[field] = self.blobs.add_file(path)[1]
            else:
                known = files.disk_digest if field == "disk" else None
                moved[field] = self.blobs.adopt(path, known or sha256_file(path))
        return ImageFiles(
            disk=moved["disk"],
            disk_format=files.disk_format,
            kernel=moved["kernel"],
            initrd=moved["initrd"],
            cmdline=files.cmdline,
            defaults=files.defaults,
            digest=files.digest,
            ready_port=files.ready_port,
        )

    def _record(
        self,
        name: str,
        tag: str,
        files: ImageFiles,
        registry: str | None = None,
        org: str | None = None,
        source: str | None = None,
    ) -> Image:
        parts = [p for p in (files.disk, files.kernel, files.initrd) if p is not None]
        return Image(
            name=name,
            tag=tag,
            registry=registry,
            org=org,
            disk=files.disk,
            disk_format=files.disk_format,
            kernel=files.kernel,
            initrd=files.initrd,
            cmdline=files.cmdline,
            size=sum(p.stat().st_size for p in parts),
            created=datetime.now(UTC),
            digest=files.digest,
            source=source,
            defaults=files.defaults,
            ready_port=files.ready_port,
        )

    # ---- registries ----

    def pull(
        self,
        image: str,
        registry: str | None = None,
        org: str | None = None,
        progress: Progress = no_progress,
        ready_port: int | None = None,
    ) -> Image:
        """Pull ``image``; a second pull of the same reference waits and does no work.

        ``ready_port`` overrides the one the image carries (0: none)."""
        ref = check_allowed(parse_reference(image, registry, org), self._allowed_registries)
        backend = self._registry()
        workdir = self._home / "pulls" / hashlib.sha256(str(ref).encode()).hexdigest()[:32]
        with exclusive(workdir.with_suffix(".lock")):
            local = self._store.get_image(ref.name, ref.tag)
            remote = ref.digest or backend.manifest_digest(ref)
            if remote is None:
                raise ImageNotFound(f"no image {ref} in its registry", reference=str(ref))
            if local is not None and local.digest == remote and local.source == str(ref):
                return self._with_ready_port(local, ready_port)  # nothing to move
            workdir.mkdir(parents=True, exist_ok=True)
            try:
                files = self._vetted(backend.pull(ref, workdir, progress))
            except UnsafeDisk:
                shutil.rmtree(workdir, ignore_errors=True)  # nothing of it is kept
                raise
            files = self._adopt(files, copy=False)
            files = dataclasses.replace(files, ready_port=chosen_port(ready_port, files.ready_port))
            record = self._record(ref.name, ref.tag, files, ref.registry, ref.org, source=str(ref))
            self._store.put_image(record)
            shutil.rmtree(workdir, ignore_errors=True)
        # The lock file stays: unlinking it would let a third pull lock a new file while a
        # second still waits on the old one.
        self.collect_garbage()
        return record

    def _with_ready_port(self, image: Image, ready_port: int | None) -> Image:
        """``image`` with the ready port a request chose, stored if it changed."""
        port = chosen_port(ready_port, image.ready_port)
        if port != image.ready_port:
            image.ready_port = port
            self._store.put_image(image)
        return image

    def push(
        self,
        name: str,
        target: str,
        registry: str | None = None,
        org: str | None = None,
        dry_run: bool = False,
        progress: Progress = no_progress,
    ) -> tuple[Image, str | None]:
        """Push local image ``name`` to ``target``; the manifest digest (None on a dry run)."""
        image = self.get(name)
        ref = check_allowed(parse_reference(target, registry, org), self._allowed_registries)
        backend = self._registry()
        disk_format = self._checked_disk(image)
        if dry_run:
            return image, None
        files = ImageFiles(
            disk=image.disk,
            disk_format=disk_format,
            kernel=image.kernel,
            initrd=image.initrd,
            cmdline=image.cmdline,
            defaults=image.defaults,
            ready_port=image.ready_port,
        )
        digest = backend.push(files, ref, progress)
        image.digest, image.registry, image.org = digest, ref.registry, ref.org
        self._store.put_image(image)
        return image, digest

    def _checked_disk(self, image: Image) -> str | None:
        """The image's disk format, checked again (cheaply): an image stored by an older
        meda may be one this meda would refuse."""
        if image.disk is None:
            return None
        fmt = diskprobe.check_standalone(image.disk)
        if image.disk_format is not None and image.disk_format != fmt:
            raise UnsafeDisk(
                f"image '{image.ref}' is recorded as {image.disk_format} but its disk is "
                f"{fmt}: remove it and import or pull it again",
                image=image.ref,
            )
        return fmt

    def checked_base(self, image: Image) -> tuple[Path, str] | None:
        """The disk a new VM of ``image`` rests on and its probed format, if it has one."""
        fmt = self._checked_disk(image)
        return None if image.disk is None or fmt is None else (image.disk, fmt)

    # ---- from a VM ----

    def create_from_vm(
        self,
        vm_name: str,
        name: str,
        tag: str,
        registry: str | None,
        org: str | None,
        ready_port: int | None = None,
    ) -> Image:
        """A new image from a stopped VM's disk (flattened), kernel and command line; its
        ready port is the VM's image's unless ``ready_port`` is given (0: none)."""
        parse_image_ref(f"{name}:{tag}")
        vm = self._stopped_vm(vm_name)
        self._refuse_existing(name, tag)
        base = self._store.get_image(*parse_image_ref(vm.image))
        staging = self.blobs.staging()
        try:
            # A VM an older meda made and never started since: its chain is not checked yet.
            # The disk is what its storage recorded (a raw disk is data, whatever its
            # guest wrote into it) and is flattened by that storage, never by guessing.
            diskprobe.check_chain(vm.disk_path, self._disk_roots, vm.disk_format)
            storage = self._storage_named(vm.storage)
            flat = self.flatten_disk(vm.disk_path, staging, storage)
            recorded = storage.disk_format  # never what the guest's bytes look like
            files = ImageFiles(
                disk=flat,
                disk_format=recorded if recorded in diskprobe.FORMATS else self._probe(flat),
                kernel=base.kernel if base else None,
                initrd=base.initrd if base else None,
                cmdline=base.cmdline if base else None,
                defaults=vm.spec,
                ready_port=chosen_port(ready_port, base.ready_port if base else None),
            )
            image = self._record(name, tag, self._adopt(files, copy=False), registry, org)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self._insert(image)

    def _stopped_vm(self, vm_name: str) -> VM:
        """The VM an image is made from: it must be stopped, so its disk holds still."""
        vm = self._store.get_vm(vm_name)
        if vm is None:
            raise VMNotFound(vm_name)
        if vm.state != VMState.STOPPED:
            raise Conflict(
                f"VM '{vm_name}' is {vm.state.value}: stop it first, so its disk is not "
                "read while it is being written",
                vm=vm_name,
            )
        return vm

    def flatten_disk(
        self, source: Path, folder: Path, storage: StorageBackend | None = None
    ) -> Path:
        """A standalone copy of the disk ``source`` in ``folder``, in the format and under
        the name ``storage`` (by default the configured one) gives its disks."""
        storage = storage or self._storage()
        flat = folder / storage.disk_name()
        storage.flatten(source, flat)
        return flat

    def agent_program(self) -> Path | None:
        """The selected agent backend's guest program, which images meda builds ship;
        None without one (BackendUnavailable if the backend cannot be used here)."""
        agent = self._agent()
        return None if agent is None else agent.guest_program()

    # ---- removal ----

    def remove(self, ref: str) -> Image:
        """Remove an image no VM uses (409 otherwise) and the blobs only it held."""
        image = self.get(ref)
        users = self.users(image)
        if users:
            raise Conflict(
                f"image '{image.ref}' is used by VM(s) {', '.join(users)}; delete them first",
                image=image.ref,
                vms=users,
            )
        self._store.delete_image(image.name, image.tag)
        self.collect_garbage()
        return image

    def prune(self, all_images: bool) -> tuple[builtins.list[str], builtins.list[str], int]:
        """Remove unused images (pulled ones; every one with ``all_images``) and dangling
        blobs; never anything a VM uses. Returns (images, blobs, bytes freed)."""
        removed: builtins.list[str] = []
        for image in self.list():
            pulled = image.source is not None and not image.source.startswith("build:")
            if (all_images or pulled) and not self.users(image):
                self._store.delete_image(image.name, image.tag)
                removed.append(image.ref)
        before = self._blob_bytes()
        blobs = self.collect_garbage()
        pulls = self._home / "pulls"
        for leftover in pulls.iterdir() if pulls.exists() else []:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
                blobs.append(f"pulls/{leftover.name}")
        return removed, blobs, before - self._blob_bytes()

    def collect_garbage(self) -> builtins.list[str]:
        """Delete blobs that no image holds and no VM disk is backed by."""
        keep = set()
        for image in self.list():
            for path in (image.disk, image.kernel, image.initrd):
                if path is not None:
                    keep.add(f"sha256:{path.name}")
        for vm in self._store.list_vms():
            chain = self._backing_chain(vm)
            if chain is None:  # what this VM rests on is unknown: keep every blob
                return []
            for backing in chain:
                if backing.parent == self.blobs.root / "sha256":
                    keep.add(f"sha256:{backing.name}")
        return self.blobs.remove_except(keep)

    def _backing_chain(self, vm: VM) -> builtins.list[Path] | None:
        """Every file below ``vm``'s disk (a clone's rests on its template's frozen disk,
        which rests on the image), as the storage that made it reads it; None when that
        storage is not here to ask."""
        try:
            storage = self._storage_named(vm.storage)
        except MedaError:
            return None
        chain: builtins.list[Path] = []
        disk = vm.disk_path
        while len(chain) < MAX_CHAIN:
            try:
                backing = storage.disk_info(disk).backing_file
            except Exception:
                break
            if backing is None:
                break
            chain.append(backing)
            disk = backing
        return chain

    def _blob_bytes(self) -> int:
        folder = self.blobs.root / "sha256"
        return sum(p.stat().st_blocks * 512 for p in folder.iterdir()) if folder.exists() else 0
