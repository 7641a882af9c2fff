"""Update errors, grouped by what the caller does: nothing changed, or the change was undone."""


class UpdateRejected(Exception):
    """The release was rejected before anything on the gateway changed (bad signature, changed
    byte, lower version, incompatible outbox). The message names the check and what to do."""


class UpdateRolledBack(Exception):
    """The new version was installed but did not report ready in time; the previous version was
    restored and started again. The message names the version that runs now."""


class UpdateFailed(Exception):
    """The install folder or the restart failed in a way the rollback could not undo; a person
    must look. The message describes the state of the install folder."""
