"""The ledger page's list of contacts (/ui/contacts): filtered, searched, paged by keyset, exported as CSV,
and bulk suppress / release of a selection. The queries are ``welcome_mailer.contact_list``'s; guards,
audit and page furniture are the ledger pages' own (``welcome_mailer.web.ui``)."""

from __future__ import annotations

from datetime import date
from typing import Annotated
from urllib.parse import parse_qsl, urlencode

from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse

from welcome_mailer import contact_list, operator_actions
from welcome_mailer.web.ui import ECHOED_MAX, LedgerDep, Readers, SettingsDep, _page, _root, can_edit, check_post

router = APIRouter(prefix="/ui")
# The states an operator filters by, in the overview's order (erased addresses are not listed: only
# their keyed hash is kept).
STATES = operator_actions.STATE_ORDER
FILTER_FIELDS = ("state", "run", "file", "changed_from", "changed_to", "q")
BULK_ACTIONS = {"suppress": "Suppress", "release": "Release"}


def _day(text: str) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def list_filter(
    ledger: LedgerDep,
    settings: SettingsDep,
    state: str = "",
    run: str = "",
    file: str = "",
    changed_from: str = "",
    changed_to: str = "",
    q: str = "",
    sort: str = "newest",
) -> contact_list.ContactFilter:
    """The list's query string as a filter; a source file becomes the runs that read it."""
    runs = contact_list.runs_of_file(ledger, file, settings.data_roots) if file else None
    return contact_list.ContactFilter(
        state=state if state in STATES else "",
        run_id=run,
        runs=runs,
        changed_from=_day(changed_from),
        changed_to=_day(changed_to),
        search=q[: contact_list.SEARCH_MAX],
        newest_first=sort != "oldest",
    )


FilterDep = Annotated[contact_list.ContactFilter, Depends(list_filter)]


def _query_string(request: Request, **changes) -> str:
    """The list's query string for its links (next page, export, back after a bulk action), each value cut
    as the filter cuts it."""
    params = {k: v[:ECHOED_MAX] for k, v in request.query_params.items() if k not in ("after", "notice")}
    params.update(changes)
    return urlencode({k: v for k, v in params.items() if v})


@router.get("/contacts", response_class=HTMLResponse, dependencies=Readers)
def contacts(
    request: Request, ledger: LedgerDep, filters: FilterDep, after: str = "", notice: str = ""
) -> HTMLResponse:
    try:
        found = contact_list.page(ledger, filters, after)
    except contact_list.SearchTooBroad as exc:
        found, notice = contact_list.ContactPage([], None), str(exc)
    return _page(
        request,
        "contacts.html",
        found=found,
        filters=filters,
        states=STATES,
        asked_filters={k: request.query_params.get(k, "")[: contact_list.SEARCH_MAX] for k in FILTER_FIELDS},
        sort="oldest" if not filters.newest_first else "newest",
        next_link=f"?{_query_string(request, after=found.next_after)}" if found.next_after else None,
        first_link=f"?{_query_string(request)}" if after else None,
        export_link=f"contacts.csv?{_query_string(request)}",
        bulk_actions=BULK_ACTIONS,
        back=_query_string(request),
        notice=notice[:500],
    )


@router.get("/contacts.csv", dependencies=Readers)
def contacts_csv(ledger: LedgerDep, filters: FilterDep) -> StreamingResponse:
    return StreamingResponse(
        contact_list.export_csv(ledger, filters),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="welcome-contacts.csv"'},
    )


@router.post("/contacts/bulk", dependencies=[Depends(can_edit)])
def bulk_action(
    request: Request,
    user: GetUserDep,
    ledger: LedgerDep,
    action: Annotated[str, Form()],
    reason: Annotated[str, Form()] = "",
    email: Annotated[list[str] | None, Form()] = None,
    confirm: Annotated[str, Form()] = "",
    back: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
) -> RedirectResponse:
    """Suppress or release the selected contacts, each audited as the single action is. The form's
    required checkbox (``confirm``) is checked here too: a browser dialog is ignored in Airflow's frame."""
    check_post(request, csrf)
    emails = sorted(set(email or []))[: contact_list.PAGE_SIZE]
    try:
        if action not in BULK_ACTIONS:
            raise ValueError(f"no bulk action {action[:40]!r}")
        if not emails:
            raise ValueError("select at least one contact")
        if confirm != "yes":
            raise ValueError(f"tick the box to confirm: {action} {len(emails)} contact(s)")
        if action == "suppress":
            counts = operator_actions.suppress(ledger, emails, user.get_name(), reason, detail="bulk, from the list")
            notice = f"suppressed {counts['suppressed']} of {len(emails)} selected (others: already so)"
        else:
            released = sum(operator_actions.release(ledger, e, user.get_name(), reason) for e in emails)
            notice = f"released {released} of {len(emails)} selected (only failed contacts are released)"
    except (operator_actions.InvalidEmail, operator_actions.EraseKeyMissing, ValueError) as exc:
        notice = f"not done: {exc}"
    # Back to the list as it was (``back``: its query string), with the notice.
    params = [(k, v) for k, v in parse_qsl(back) if k != "notice"] + [("notice", notice)]
    return RedirectResponse(f"{_root(request)}/ui/contacts?{urlencode(params)}", status_code=303)
