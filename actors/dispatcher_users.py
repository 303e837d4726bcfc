"""The Dispatcher's user duties (a mixin): the admin calls behind
``/api/v1/users`` and the users view its I/O bridge authenticates with.

Users live in the agency under ``/chorus/users/<name>`` (``protocol/users.py``
describes a record).  The Dispatcher reads them with every poll of its
agency view and hands them to its bridge (``bridge.set_users``), so a new
user, a changed password or a revoked role takes effect on this node within
one poll (``POLL_S``).

A change is read-modify-write: a linearizable read of every user, the pure
:func:`protocol.users.plan_change`, then a transaction on the precondition
that the users are still what was read.  That makes "never delete or demote
the last admin" hold under concurrent changes (two admins deleting each
other: one of the two transactions fails its precondition, reads again and
is refused).  A precondition that failed because of an unrelated change is
retried a few times.

Hashing happens before: the HTTP layer (runtime/, where salts and secrets
may be drawn) passes ready records and hashes; the actor never sees a
password.
"""
from __future__ import annotations

from typing import Any, Callable

from protocol.agency import AgencyReply, Mutation, Precondition, Read, Txn
from protocol.users import USERS_ROOT, UserError, plan_change, public_view

CHANGE_TRIES_MAX = 5


class DispatcherUsers:
    """Mixed into :class:`actors.dispatcher.Dispatcher`."""

    def _users_polled(self, tree: Any) -> None:
        """The users as the last poll read them: to the bridge's authenticator."""
        set_users = getattr(self.bridge, "set_users", None)
        if set_users is not None:
            set_users(tree if isinstance(tree, dict) else {})

    def _read_users(self, then: Callable[[dict], None], fail: Callable) -> None:
        def got(reply: AgencyReply) -> None:
            if reply.status != "ok" or not isinstance(reply.result, dict):
                fail(503, "unavailable", f"agency: {reply.error or reply.status}")
                return
            tree = (list(reply.result.get("values") or []) + [None])[0]
            then(tree if isinstance(tree, dict) else {})

        self._agency(Read((USERS_ROOT,), linearizable=True), got)

    def _admin_users(self, args: dict, ok: Callable, fail: Callable) -> None:
        """Every user's record (the HTTP layer shows only public views)."""
        self._read_users(lambda tree: ok({n: r for n, r in tree.items() if isinstance(r, dict)}), fail)

    def _admin_change_user(self, args: dict, ok: Callable, fail: Callable, tries: int = 0) -> None:
        op, name, arg = args.get("op"), args.get("name"), args.get("arg")

        def got(tree: dict) -> None:
            users = {n: r for n, r in tree.items() if isinstance(r, dict)}
            try:
                new = plan_change(users, str(op), name, arg)
            except UserError as e:
                fail(e.status, e.code, e.message)
                return
            path = f"{USERS_ROOT}/{name}"
            mutation = Mutation(path, "delete") if new is None else Mutation(path, "set", new)
            pre = Precondition(USERS_ROOT, "equals", tree) if tree else Precondition(USERS_ROOT, "absent")

            def done(reply: AgencyReply) -> None:
                if reply.status != "ok" or not isinstance(reply.result, dict):
                    fail(503, "unavailable", f"agency: {reply.error or reply.status} (the change may or may not "
                                             "have been made; list the users to see)")
                elif reply.result.get("ok"):
                    # answer once this node's own view has it: the caller may log in at once
                    result = {"name": name, "deleted": True} if new is None else public_view(new)
                    self.after_poll.append(lambda: ok(result))
                    self._poll()
                elif tries + 1 < CHANGE_TRIES_MAX:
                    self._admin_change_user(args, ok, fail, tries + 1)  # the users changed meanwhile
                else:
                    fail(409, "conflict", "the users kept changing meanwhile; try again")

            self._agency(Txn((mutation,), (pre,)), done)

        self._read_users(got, fail)
