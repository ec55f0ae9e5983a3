"""The seed's account flow, run against a live cedard through a client that
openapi-python-client generated from cedard's /openapi.json.

Sign-up, convert with a team name, invite as dev, list pending invites,
accept, decisions on /v1 and AuthZEN, role change, removal: every request
body is one of the generated typed models, every call one of the generated
API functions, and every answer is checked as the typed model it should be.

Write-then-check is typed too: the `store_revision` a write answers (the
typed `Accepted` and `MemberView`) is passed back as the typed consistency
`{"at_least": n}` (`ConsistencyBodyType1`) in `/v1` checks and in AuthZEN
`options`, and the `/v1` answer's `store_revision` must be at least n.
Decisions about a Pod of the team account describe the Pod inline: on `/v1`
as a typed `CedarEntity` (its `account` an `EntityValue`), on AuthZEN as the
resource `Entity`'s typed `properties` (the same `Attributes`).

Usage:  CEDARD_URL=http://127.0.0.1:8180 CEDARD_KEY=cdk_... python seed_flow.py
(the key needs the decide, manage and admin scopes; the package
`cedard_client` must be importable, e.g. through PYTHONPATH).
Prints one line per step; exits 0 only if every step gave the expected
result, 1 (naming the step and what came back) otherwise.
"""

import os
import sys
from http import HTTPStatus
from uuid import uuid4

from cedard_client import AuthenticatedClient
from cedard_client.api.authzen import evaluation
from cedard_client.api.decisions import is_authorized
from cedard_client.api.management import (
    accept,
    convert,
    create_invite,
    list_invites,
    list_members,
    remove_member,
    set_email_verified,
    set_role,
    show_invite,
    sign_up,
)
from cedard_client.models import (
    AcceptBody,
    Accepted,
    AccountKind,
    AccountView,
    Action,
    Attributes,
    CedarEntity,
    CheckBody,
    CheckResponse,
    ConsistencyBodyType1,
    ConvertBody,
    DecisionBody,
    DecisionContext,
    Effect,
    EmailVerifiedBody,
    Entity,
    EntityRefObject,
    EntityValue,
    EvaluationBody,
    InviteLinkView,
    InviteStatus,
    InviteView,
    IssuedInviteView,
    MemberView,
    NewInviteBody,
    Options,
    RoleBody,
    SignedUp,
    SignUpBody,
    UserView,
)


class StepFailed(Exception):
    pass


current_step = "setup"  # named in the failure message of an unexpected error


def start(step):
    global current_step
    current_step = step
    return step


def ok(step):
    print(f"ok   {step}", flush=True)


def check(step, condition, what):
    """An explicit check (not `assert`, which `python -O` strips)."""
    if not condition:
        raise StepFailed(f"{step}: {what}")


def expect(step, response, status, model):
    """The answer must have this status and parse as this typed model."""
    parsed = response.parsed
    if response.status_code != status or not isinstance(parsed, model):
        body = response.content.decode("utf-8", "replace")[:500]
        raise StepFailed(
            f"{step}: expected {int(status)} {model.__name__}, got "
            f"{int(response.status_code)} {type(parsed).__name__}: {body}"
        )
    return parsed


def expect_list(step, response, model):
    """The answer must be 200 and a list of this typed model."""
    parsed = response.parsed
    if (
        response.status_code != HTTPStatus.OK
        or not isinstance(parsed, list)
        or not all(isinstance(item, model) for item in parsed)
    ):
        body = response.content.decode("utf-8", "replace")[:500]
        raise StepFailed(
            f"{step}: expected 200 list[{model.__name__}], got "
            f"{int(response.status_code)} {type(parsed).__name__}: {body}"
        )
    return parsed


def asked(label, question, *args, **kwargs):
    """One decision step: `question(step, *args, **kwargs)` checks its answer."""
    step = start(label)
    question(step, *args, **kwargs)
    ok(step)


def user(uid):
    return EntityRefObject(type_="User", id=uid)


STORE_REVISION_HEADER = "Cedard-Store-Revision"


def written_revision(step, answer, response):
    """The store revision a write answered: the typed model's optional
    `store_revision`, which must be present and agree with the declared
    `Cedard-Store-Revision` header."""
    revision = answer.store_revision
    check(step, isinstance(revision, int) and not isinstance(revision, bool),
          f"store_revision missing from the typed answer: {revision!r}")
    header = response.headers.get(STORE_REVISION_HEADER)
    check(step, header == str(revision), f"{STORE_REVISION_HEADER} header {header!r}, field {revision}")
    return revision


def main():
    base_url = os.environ.get("CEDARD_URL")
    key = os.environ.get("CEDARD_KEY")
    if not base_url or not key:
        raise StepFailed("setup: CEDARD_URL and CEDARD_KEY must be set")
    client = AuthenticatedClient(base_url=base_url, token=key)

    # Unique per run, so that the script can run twice against one daemon.
    run = uuid4().hex[:8]
    owner = f"olga-{run}"
    invitee = f"kim-{run}"
    invitee_email = f"kim-{run}@example.com"
    team_name = f"Acme {run}"
    account = owner  # a personal account's id is its owner's

    # The questions asked before and after: createPod (the dev role may,
    # basic may not) and useAccount (basic and dev may) on the owner's
    # account, with the stored facts only (no inline entities needed).
    # With `at_least`, the question carries the typed consistency
    # `{"at_least": n}` and the /v1 answer must be at store revision n or later.
    def ask_v1(step, action, expected, principal=None, at_least=None):
        body = CheckBody(
            principal=principal if principal is not None else user(invitee),
            action=EntityRefObject(type_="Action", id=action),
            resource=EntityRefObject(type_="Account", id=account),
        )
        if at_least is not None:
            body.consistency = ConsistencyBodyType1(at_least=at_least)
        answer = expect(step, is_authorized.sync_detailed(client=client, body=body), HTTPStatus.OK, CheckResponse)
        check(step, answer.decision == expected, f"/v1 {action}: expected {expected}, got {answer.decision}")
        if at_least is not None:
            check(step, answer.store_revision >= at_least,
                  f"/v1 {action}: store_revision {answer.store_revision} < at_least {at_least}")

    def ask_authzen(step, action, expected, at_least=None):
        body = EvaluationBody(
            subject=Entity(type_="User", id=invitee),
            action=Action(name=action),
            resource=Entity(type_="Account", id=account),
        )
        if at_least is not None:
            body.options = Options(consistency=ConsistencyBodyType1(at_least=at_least))
        answer = expect(step, evaluation.sync_detailed(client=client, body=body), HTTPStatus.OK, DecisionBody)
        check(step, answer.decision is expected, f"AuthZEN {action}: expected {expected}, got {answer.decision}")

    # Questions about a Pod of the team account. cedard does not store Pods:
    # the Pod is described inline, its `account` attribute an entity reference
    # (`{"__entity": {"type": "Account", "id": ...}}`) to the stored team
    # account; the invitee's roles and the account come from the store.
    # startPod: dev may, basic may not; connectPod: both may. Every answer must
    # be free of evaluation errors (a deny from a policy that failed to
    # evaluate, say on an unknown account, would otherwise pass as a deny),
    # and an allow must name the role's policy.
    pod = f"pod-{run}"

    def pod_attributes():
        attrs = Attributes()
        attrs["account"] = EntityValue(field_entity=EntityRefObject(type_="Account", id=account))
        return attrs

    def pod_entity():
        return CedarEntity(uid=EntityRefObject(type_="Pod", id=pod), attrs=pod_attributes(), parents=[])

    def ask_pod_v1(step, action, expected, reason=None, at_least=None):
        body = CheckBody(
            principal=user(invitee),
            action=EntityRefObject(type_="Action", id=action),
            resource=EntityRefObject(type_="Pod", id=pod),
            entities=[pod_entity()],
        )
        if at_least is not None:
            body.consistency = ConsistencyBodyType1(at_least=at_least)
        answer = expect(step, is_authorized.sync_detailed(client=client, body=body), HTTPStatus.OK, CheckResponse)
        check(step, answer.decision == expected, f"/v1 {action} on Pod: expected {expected}, got {answer.decision}")
        check(step, answer.errors == [], f"/v1 {action} on Pod: errors {[e.to_dict() for e in answer.errors]}")
        ids = [r.policy_id for r in answer.reasons]
        if reason is not None:
            check(step, reason in ids, f"/v1 {action} on Pod: reasons {ids}, expected {reason!r} among them")
        if at_least is not None:
            check(step, answer.store_revision >= at_least,
                  f"/v1 {action} on Pod: store_revision {answer.store_revision} < at_least {at_least}")

    def ask_pod_authzen(step, action, expected, reason=None, at_least=None):
        options = Options(explain=True)
        if at_least is not None:
            options.consistency = ConsistencyBodyType1(at_least=at_least)
        body = EvaluationBody(
            subject=Entity(type_="User", id=invitee),
            action=Action(name=action),
            resource=Entity(type_="Pod", id=pod, properties=pod_attributes()),
            options=options,
        )
        answer = expect(step, evaluation.sync_detailed(client=client, body=body), HTTPStatus.OK, DecisionBody)
        check(step, answer.decision is expected, f"AuthZEN {action} on Pod: expected {expected}, got {answer.decision}")
        context = answer.context
        check(step, isinstance(context, DecisionContext),
              f"AuthZEN {action} on Pod: no explain context: {type(context).__name__}")
        check(step, context.errors == [], f"AuthZEN {action} on Pod: errors {context.errors!r}")
        check(step, not context.ignored, f"AuthZEN {action} on Pod: ignored {context.ignored!r}")
        if reason is not None:
            check(step, isinstance(context.reasons, list) and reason in context.reasons,
                  f"AuthZEN {action} on Pod: reasons {context.reasons!r}, expected {reason!r} among them")

    def members(step):
        got = list_members.sync_detailed(account, client=client, x_actor=owner)
        return {m.user: m.role for m in expect_list(step, got, MemberView)}

    # 1. Two sign-ups: the owner, and the invitee (email verified at sign-up
    #    is false by default; the product verifies it below).
    step = start(f"sign-up {owner}")
    got = sign_up.sync_detailed(client=client, body=SignUpBody(id=owner, email=f"olga-{run}@example.com", name="Olga"))
    signed = expect(step, got, HTTPStatus.CREATED, SignedUp)
    check(step, signed.user.id == owner, f"user id {signed.user.id!r}")
    check(step, signed.personal_account.id == owner, f"personal account {signed.personal_account.id!r}")
    check(step, signed.personal_account.kind is AccountKind.PERSONAL, f"kind {signed.personal_account.kind!r}")
    ok(step)

    step = start(f"sign-up {invitee}")
    got = sign_up.sync_detailed(client=client, body=SignUpBody(id=invitee, email=invitee_email, name="Kim"))
    signed = expect(step, got, HTTPStatus.CREATED, SignedUp)
    check(step, signed.user.email == invitee_email, f"email {signed.user.email!r}")
    check(step, signed.user.email_verified is False, f"email_verified {signed.user.email_verified!r}")
    ok(step)

    step = start(f"verify email of {invitee}")
    got = set_email_verified.sync_detailed(invitee, client=client, body=EmailVerifiedBody(email_verified=True))
    verified = expect(step, got, HTTPStatus.OK, UserView)
    check(step, verified.email_verified is True, f"email_verified {verified.email_verified!r}")
    ok(step)

    # 2. The owner converts their personal account, naming the team.
    step = start(f"convert {account} to team {team_name!r}")
    got = convert.sync_detailed(account, client=client, body=ConvertBody(name=team_name), x_actor=owner)
    converted = expect(step, got, HTTPStatus.OK, AccountView)
    check(step, converted.kind is AccountKind.TEAM, f"kind {converted.kind!r}")
    check(step, converted.name == team_name, f"name {converted.name!r}")
    check(step, converted.owner == owner, f"owner {converted.owner!r}")
    ok(step)

    # 3. The owner invites the invitee as dev, bound to their email.
    step = start(f"invite {invitee} as dev")
    body = NewInviteBody(role="dev", email=invitee_email, expires_in_hours=48)
    got = create_invite.sync_detailed(account, client=client, body=body, x_actor=owner)
    issued = expect(step, got, HTTPStatus.CREATED, IssuedInviteView)
    check(step, issued.role == "dev", f"role {issued.role!r}")
    check(step, issued.email == invitee_email, f"email {issued.email!r}")
    check(step, len(issued.token) > 0, "empty token")
    check(step, issued.link.endswith("/invites/" + issued.token), f"link {issued.link!r}")
    ok(step)

    # 4. The owner lists the pending invites.
    step = start("list pending invites")
    invites = expect_list(step, list_invites.sync_detailed(account, client=client, x_actor=owner), InviteView)
    mine = [i for i in invites if i.id == issued.id]
    check(step, len(mine) == 1, f"invite {issued.id} not listed: {[i.id for i in invites]}")
    check(step, mine[0].status is InviteStatus.PENDING, f"status {mine[0].status!r}")
    check(step, mine[0].role == "dev", f"role {mine[0].role!r}")
    check(step, mine[0].created_by == owner, f"created_by {mine[0].created_by!r}")
    ok(step)

    # The invite link's page: what the invite is for, without accepting it.
    step = start("show invite link")
    shown = expect(step, show_invite.sync_detailed(issued.token, client=client), HTTPStatus.OK, InviteLinkView)
    check(step, shown.account == account, f"account {shown.account!r}")
    check(step, shown.account_name == team_name, f"account_name {shown.account_name!r}")
    check(step, shown.role == "dev", f"role {shown.role!r}")
    check(step, shown.email_bound is True, f"email_bound {shown.email_bound!r}")
    ok(step)

    # 5. Before accepting, the invitee is no member: deny, asked with the
    #    object form of a UID and with Cedar's string form.
    asked("before accept: createPod is deny on /v1", ask_v1, "createPod", Effect.DENY)
    asked("before accept: createPod is deny on /v1 (string UID)", ask_v1, "createPod", Effect.DENY, principal=f'User::"{invitee}"')
    asked("before accept: createPod is false on AuthZEN", ask_authzen, "createPod", False)
    asked("before accept: startPod on the team's Pod is deny on /v1 (inline CedarEntity)", ask_pod_v1, "startPod", Effect.DENY)
    asked("before accept: connectPod on the team's Pod is false on AuthZEN (typed properties)", ask_pod_authzen, "connectPod", False)

    # 6. The invitee accepts.
    step = start(f"{invitee} accepts")
    got = accept.sync_detailed(client=client, body=AcceptBody(token=issued.token), x_actor=invitee)
    accepted = expect(step, got, HTTPStatus.OK, Accepted)
    check(step, accepted.account == account, f"account {accepted.account!r}")
    check(step, accepted.role == "dev", f"role {accepted.role!r}")
    accepted_at = written_revision(step, accepted, got)
    ok(step)

    # Write-then-check: the accept's store revision, passed back as the typed
    # consistency `{"at_least": n}`.
    asked(f"write-then-check: createPod is allow on /v1 at_least {accepted_at}", ask_v1, "createPod", Effect.ALLOW, at_least=accepted_at)
    asked(f"write-then-check: createPod is true on AuthZEN at_least {accepted_at}", ask_authzen, "createPod", True, at_least=accepted_at)

    step = start("invite no longer pending")
    invites = expect_list(step, list_invites.sync_detailed(account, client=client, x_actor=owner), InviteView)
    check(step, all(i.id != issued.id for i in invites), f"invite {issued.id} still listed")
    ok(step)

    step = start("members after accept")
    now = members(step)
    check(step, now.get(invitee) == "dev", f"members {now}")
    check(step, now.get(owner) == "admin", f"members {now}")
    ok(step)

    # 7. As a dev, the same question is now allow, on /v1 and on AuthZEN.
    asked("as dev: createPod is allow on /v1", ask_v1, "createPod", Effect.ALLOW)
    asked("as dev: createPod is allow on /v1 (string UID)", ask_v1, "createPod", Effect.ALLOW, principal=f'User::"{invitee}"')
    asked("as dev: createPod is true on AuthZEN", ask_authzen, "createPod", True)

    # 7b. As a dev, on a Pod of the team account: startPod and connectPod.
    asked(f"as dev: startPod on the team's Pod is allow on /v1 at_least {accepted_at} (inline CedarEntity)", ask_pod_v1, "startPod", Effect.ALLOW, reason="dev", at_least=accepted_at)
    asked("as dev: connectPod on the team's Pod is allow on /v1 (inline CedarEntity)", ask_pod_v1, "connectPod", Effect.ALLOW, reason="dev")
    asked(f"as dev: startPod on the team's Pod is true on AuthZEN at_least {accepted_at} (typed properties)", ask_pod_authzen, "startPod", True, reason="dev", at_least=accepted_at)

    # 8. The owner makes the invitee basic: createPod is deny, useAccount allow.
    step = start(f"change role of {invitee} to basic")
    got = set_role.sync_detailed(account, invitee, client=client, body=RoleBody(role="basic"), x_actor=owner)
    member = expect(step, got, HTTPStatus.OK, MemberView)
    check(step, member.user == invitee, f"user {member.user!r}")
    check(step, member.role == "basic", f"role {member.role!r}")
    demoted_at = written_revision(step, member, got)
    ok(step)

    asked(f"as basic: startPod on the team's Pod is deny on /v1 at_least {demoted_at} (inline CedarEntity)", ask_pod_v1, "startPod", Effect.DENY, at_least=demoted_at)
    asked(f"as basic: startPod on the team's Pod is false on AuthZEN at_least {demoted_at} (typed properties)", ask_pod_authzen, "startPod", False, at_least=demoted_at)
    asked("as basic: connectPod on the team's Pod is allow on /v1 (inline CedarEntity)", ask_pod_v1, "connectPod", Effect.ALLOW, reason="basic")
    asked("as basic: connectPod on the team's Pod is true on AuthZEN (typed properties)", ask_pod_authzen, "connectPod", True, reason="basic")

    asked("as basic: createPod is deny on /v1", ask_v1, "createPod", Effect.DENY)
    asked("as basic: createPod is false on AuthZEN", ask_authzen, "createPod", False)
    asked("as basic: useAccount is allow on /v1", ask_v1, "useAccount", Effect.ALLOW)

    # 9. The owner removes the invitee: 204, then deny, and no longer listed.
    step = start(f"remove {invitee}")
    got = remove_member.sync_detailed(account, invitee, client=client, x_actor=owner)
    check(step, got.status_code == HTTPStatus.NO_CONTENT,
          f"expected 204, got {int(got.status_code)}: {got.content.decode('utf-8', 'replace')[:500]}")
    ok(step)

    asked("after removal: useAccount is deny on /v1", ask_v1, "useAccount", Effect.DENY)
    asked("after removal: useAccount is false on AuthZEN", ask_authzen, "useAccount", False)
    asked("after removal: connectPod on the team's Pod is deny on /v1 (inline CedarEntity)", ask_pod_v1, "connectPod", Effect.DENY)
    asked("after removal: connectPod on the team's Pod is false on AuthZEN (typed properties)", ask_pod_authzen, "connectPod", False)

    step = start("members after removal")
    now = members(step)
    check(step, invitee not in now, f"{invitee} still listed: {now}")
    check(step, now.get(owner) == "admin", f"members {now}")
    ok(step)


if __name__ == "__main__":
    try:
        main()
    except StepFailed as failure:
        print(f"FAIL {failure}", file=sys.stderr)
        sys.exit(1)
    except Exception as error:  # a transport error, an unexpected shape: still a failure
        print(f"FAIL {current_step}: unexpected {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
    print("all steps ok")
