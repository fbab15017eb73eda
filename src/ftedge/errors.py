"""The one exception hierarchy of ftedge, and the exit codes the CLI maps it to (see ARCHITECTURE.md).

Every error class ftedge defines lives here. Every message says what went wrong *and* what to do next; the CLI prints it as
``error: …`` and exits 1.
"""

from __future__ import annotations


# Every exit code `ftedge` can return, with the help text `ftedge --help` prints (tests check each has one).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
EXIT_TIMEOUT = 4
EXIT_UNREACHABLE = 5
EXIT_INTERNAL = 70  # EX_SOFTWARE (sysexits.h)
EXIT_INTERRUPTED = 130
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_ERROR: "error: the message on stderr says what went wrong and what to do",
    EXIT_USAGE: "usage error: a malformed argument or option",
    EXIT_REJECTED: "fleet send/train/policy: a device answered with an error or rejected the command; "
                   "fleet rollout start --wait: the rollout halted on a threshold",
    EXIT_TIMEOUT: "fleet send/train/policy: no reply (or result) before --timeout; "
                  "fleet rollout start --wait: not finished before --timeout",
    EXIT_UNREACHABLE: "fleet: the MQTT broker cannot be reached",
    EXIT_INTERNAL: "internal error (a bug): rerun with --debug and report the traceback",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


class FtedgeError(Exception):
    """Base of every error ftedge raises on purpose."""

    exit_code = EXIT_ERROR


class UsageError(FtedgeError):
    """A command-line argument is malformed (exit code 2, like argparse)."""

    exit_code = EXIT_USAGE


class RunDirInUse(FtedgeError):
    """A new training run was pointed at a run directory that already holds one (every task, exit 1)."""


class ModelLoadError(FtedgeError):
    """The MODEL spec cannot be imported or does not give an ``nn.Module``."""


class ExportError(FtedgeError):
    """The model cannot be turned into a training bundle."""


class GradientError(ExportError):
    """A trainable layer uses an operator ONNX Runtime cannot differentiate."""


class ParityError(ExportError):
    """The exported graphs disagree with PyTorch beyond the tolerance."""

    def __init__(self, message: str, failures: list[dict] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


class BundleError(FtedgeError):
    """A bundle is missing, tampered with, or of an unknown schema."""


class DataError(FtedgeError):
    """Training or evaluation data does not match the bundle's inputs."""


class PromptTooLong(DataError):
    """A prompt has more tokens than the model (or the device's ``[ask] max_prompt_tokens``) takes."""

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(f"the prompt is {tokens} tokens (system text and chat markers included); at most {limit} "
                         "are taken: shorten the prompt or the system text")
        self.tokens, self.limit = tokens, limit


class RuntimeBackendError(FtedgeError):
    """ONNX Runtime (training) is missing or failed."""


class CacheError(FtedgeError):
    """The embedding cache file cannot be opened or is of a newer schema."""


class AgentError(FtedgeError):
    """The device agent's configuration or state is invalid."""


class ImageError(DataError):
    """An image cannot be decoded or used, or the bundle cannot take images."""


class WavError(DataError):
    """A WAV file cannot be decoded, or its clip is unusable (silent, clipped)."""


class TextError(DataError):
    """Text data cannot be tokenized for this bundle (no tokenizer, bad CSV header)."""


class DataTooLarge(DataError):
    """A data file is above its size cap (a detection data.yaml, label file, image list or COCO JSON)."""


class KeyFileError(FtedgeError):
    """A signing or trusted key cannot be read or is not an Ed25519 key."""


class StopRequested(FtedgeError):
    """Cancel or shutdown asked a long phase (embed, evaluate, merge) to stop; the run ends as cancelled."""


class DeployError(FtedgeError):
    """A bundle could not be deployed; ``reason`` names the stage for status reports."""

    reason = "deploy"


class DeployRequestError(DeployError):
    """The request itself is unusable: URL scheme, sha256, name, trusted keys."""

    reason = "request"


class FetchError(DeployError):
    """The archive could not be downloaded, is larger than allowed, or took longer than the deadline."""

    reason = "fetch"


class HashMismatchError(DeployError):
    """The downloaded archive is not the one the sha256 names."""

    reason = "sha256"


class UnsafeArchiveError(DeployError):
    """The archive is not a .tar.gz of one plain folder (links, devices, escaping paths, huge headers...)."""

    reason = "archive"


class BundleRejectedError(DeployError):
    """The bundle failed verification (hashes, schema, signature, unlisted files)."""

    reason = "bundle"


class BundleExistsError(DeployError):
    """A different bundle already lives under the target name."""

    reason = "exists"


class DowngradeError(BundleExistsError):
    """The bundle is older than the one it would replace (a rollback needs ``allow_downgrade``)."""

    reason = "downgrade"


class BundleRestoreError(DeployError):
    """A rollback could not put a kept ``NAME.replaced-<time>`` bundle back (missing, not a folder, damaged)."""

    reason = "restore"


class DeviceRejectedError(FtedgeError):
    """A device answered a fleet command with ``rejected`` or ``error``."""

    exit_code = EXIT_REJECTED


class ReplyTimeoutError(FtedgeError):
    """A device did not answer a fleet command (or finish its job) in time."""

    exit_code = EXIT_TIMEOUT


class BrokerUnreachableError(FtedgeError):
    """The MQTT broker refused or did not answer the connection."""

    exit_code = EXIT_UNREACHABLE


class Rejected(Exception):
    """A device agent command is refused (``code`` goes into the error reply); internal to the agent,
    never shown by the CLI, hence not an FtedgeError."""

    def __init__(self, code: str, detail: str, cmd_id: str | None = None) -> None:
        super().__init__(detail)
        self.code, self.detail, self.cmd_id = code, detail, cmd_id


class OutboxError(FtedgeError):
    """The outbox file cannot be used, or a message cannot be stored."""


class CollectorError(FtedgeError):
    """The collector cannot be configured or cannot send a command."""


class BundleStoreError(FtedgeError):
    """A bundle archive cannot be published into (or read from) the collector's bundle folder."""


class FleetStoreError(FtedgeError):
    """The fleet database cannot be opened or written."""


class StoreUnavailable(FleetStoreError):
    """The fleet database is out of reach for now (connection lost, deadlock between collectors): retry the
    whole transaction later; nothing of it was committed."""


class RolloutError(FtedgeError):
    """A rollout cannot be started or changed as asked (unknown name, name taken, no devices, finished)."""


class LeaseLost(RolloutError):
    """A fenced rollout write found that another collector drives the rollouts now (nothing was written)."""
