"""Every error ado-ray raises on purpose. The class docstring is the default message.

User mistakes (bad input, bad config, a run that is already being driven) derive from
`UsageError` and end the CLI with exit code 2; everything else is a bug or an outage.
"""

from __future__ import annotations


class AdoError(Exception):
    """ado-ray failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class UsageError(AdoError):
    """The command line, a config file or an input file is not valid."""


class RepoListError(UsageError):
    """The repository list is not valid."""


class ConfigError(UsageError):
    """The configuration is not valid."""


class RunLockedError(UsageError):
    """Another driver is working on this run."""


class UnknownRunError(UsageError):
    """No run has this id."""


class ServiceUnavailableError(UsageError):
    """A server ado-ray needs did not answer; nothing was started."""


class StoreError(AdoError):
    """The state store failed."""


class LeaseLostError(StoreError):
    """This driver no longer holds the run's lease, so the store refuses its writes; the run
    is resumable (`ado resume RUN_ID`) by whoever drives it next."""


class CorruptStoreError(StoreError, UsageError):
    """The state store holds something ado-ray cannot read; nothing was started or written."""


class WorkspaceError(AdoError):
    """A git operation in the workspace failed."""


class GitAuthError(WorkspaceError):
    """The git server refused the credentials."""


class OversizedFileError(WorkspaceError):
    """The agent added or changed a file larger than `git.max_file_mb`."""


class SessionStateError(WorkspaceError):
    """A stored agent session state is not what ado-ray packs; nothing of it was restored."""


class AgentError(AdoError):
    """The agent could not be started."""
