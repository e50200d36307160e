"""The ledger in the Airflow UI ("Welcome mailer" in the navigation): the overview, a contact's page, a
run's page and its CSV, and the operator actions (suppress, erase, release, import a suppression list).

Server-rendered HTML (Jinja2, which Airflow already ships): a handful of tables and forms need no
JavaScript build, and the pages work in the UI's frame, opened on their own, and from curl.

Who may do what is Airflow's own decision, through the api-server's auth dependencies: reading needs read
access to the welcome_emails DAG, actions need edit access to it (the simple auth manager: viewer / user;
FAB and others: their DAG permissions). Both come from the login cookie (``_token``) or a bearer token.

Cross-site requests: actions are POSTs only. The login cookie is SameSite=Lax, so another site's form
cannot send it; on top of that every POST must carry this session's CSRF token (an HMAC of the session
token: another origin can neither read the cookie nor the page that holds the token) and, when the
browser sends an Origin (or Referer), it must be this server's own host.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Annotated
from urllib.parse import quote, urlencode, urlsplit

from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from welcome_mailer import contact_list, operator_actions
from welcome_mailer.ledger import Ledger
from welcome_mailer.ledger.rules import RELEASED_AT
from welcome_mailer.report import report_rows
from welcome_mailer.settings import URL_PREFIX, Settings
from welcome_mailer.web import times

DAG_ID = "welcome_emails"
ECHOED_MAX = 320  # characters of what was typed that a page shows back (an address has at most 320)
SESSION_COOKIE = "_token"  # the api-server's login cookie (airflow.api_fastapi.auth.managers.base_auth_manager)

router = APIRouter(prefix="/ui")
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.filters["when"] = times.when

# Module-level, so tests can override them (app.dependency_overrides).
can_read = requires_access_dag("GET", param_dag_id=DAG_ID)
can_edit = requires_access_dag("PUT", param_dag_id=DAG_ID)


def get_ledger() -> Ledger:
    from welcome_mailer.hooks.ledger import LedgerHook

    return LedgerHook().get_conn()


def get_settings() -> Settings:
    return Settings.from_env()


LedgerDep = Annotated[Ledger, Depends(get_ledger)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
Readers = [Depends(can_read)]


def install(app: FastAPI) -> None:
    """Add the pages to the plugin's app, and send browsers that are not logged in to Airflow's login."""
    from welcome_mailer.web import template_pages

    app.include_router(router)
    app.include_router(template_pages.router)

    @app.exception_handler(StarletteHTTPException)
    async def _login_for_browsers(request: Request, exc: StarletteHTTPException):
        from fastapi.exception_handlers import http_exception_handler

        wants_html = "text/html" in request.headers.get("accept", "")
        path, root = request.url.path, _root(request)
        on_a_page = (path[len(root) :] if path.startswith(root) else path).startswith("/ui")
        if exc.status_code in (401, 403, 404) and wants_html and on_a_page:
            context = {"status": exc.status_code, "detail": exc.detail, "dag_id": DAG_ID, **_links(request)}
            return templates.TemplateResponse(request, "denied.html", context, status_code=exc.status_code)
        return await http_exception_handler(request, exc)


def _root(request: Request) -> str:
    return request.scope.get("root_path", "")


def _links(request: Request) -> dict:
    """Where this app and the Airflow UI are, whatever prefix the api-server runs under."""

    root = _root(request)
    airflow = root[: -len(URL_PREFIX)] if root.endswith(URL_PREFIX) else ""
    return {
        "ui": f"{root}/ui",
        "airflow": airflow,
        "login": f"{airflow}/auth/login?{urlencode({'next': str(request.url)})}",
    }


def _session(request: Request) -> str:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        return cookie
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" else ""


def csrf_token(request: Request) -> str:
    return hmac.new(b"welcome-mailer-csrf", _session(request).encode(), hashlib.sha256).hexdigest()[:40]


def check_post(request: Request, csrf: str) -> None:
    """Refuse a cross-site POST: the CSRF token must match this session, and the request's Origin (or
    Referer), when the browser sends one, must be this host."""
    if not _session(request) or not hmac.compare_digest(csrf, csrf_token(request)):
        raise HTTPException(403, "this form has expired or came from another site: reload the page and try again")
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, f"cross-origin request refused (from {urlsplit(origin).netloc})")


def erased_sentence(removed: dict[str, int]) -> str:
    """What ``operator_actions.erase`` removed, in words (it counts rows per table and lines of files)."""
    emails = removed.get("send_attempts", 0)
    parts = [
        "the contact's address and name" if removed.get("sent_contacts") else "the address (not a contact)",
        f"the record of {emails} email{'s' if emails != 1 else ''} sent to it" if emails else "",
        "its staged rows of runs in progress" if removed.get("staged_contacts") else "",
        "provider events about it" if removed.get("outcome_inbox") else "",
        f"{removed['file lines']} line(s) of reports and kept files" if removed.get("file lines") else "",
    ]
    return (
        f"erased: {', '.join(p for p in parts if p)} removed. Only a keyed hash is kept, so it is never emailed again."
    )


def same_address(typed: str, email: str) -> bool:
    """The confirmation an action asks for instead of a browser dialog (the UI's frame is sandboxed
    without allow-modals, so confirm() is ignored there): the address typed again, in any case."""
    return bool(typed.strip()) and typed.strip().lower() == email.strip().lower()


def _page(request: Request, template: str, **context) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        template,
        {
            "csrf": csrf_token(request),
            "dag_id": DAG_ID,
            "quote": quote,
            "urlencode": urlencode,
            "released_at": RELEASED_AT,
            **_links(request),
            **context,
        },
    )


# -- pages -------------------------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse, dependencies=Readers)
def overview(request: Request, ledger: LedgerDep, settings: SettingsDep, notice: str = "") -> HTMLResponse:
    data = operator_actions.overview(ledger, settings.reports_dir, settings.data_roots)
    busiest = max((n for _, n in data["per_day"]), default=0)
    return _page(request, "overview.html", data=data, busiest=busiest, notice=notice)


@router.get("/contact", response_class=HTMLResponse, dependencies=Readers)
def contact(
    request: Request, ledger: LedgerDep, settings: SettingsDep, email: str = "", notice: str = ""
) -> HTMLResponse:
    view, error = None, None
    try:
        view = operator_actions.lookup(ledger, email, settings.data_roots)
    except operator_actions.InvalidEmail as exc:
        error = str(exc)
    return _page(request, "contact.html", view=view, error=error, asked=email[:ECHOED_MAX], notice=notice)


def known_run(run_id: str, ledger: LedgerDep) -> str:
    """The path's run id, if it is a run of the DAG the ledger knows; else 404, before any file is read."""
    if not contact_list.run_exists(ledger, run_id):
        raise HTTPException(404, f"no run {run_id[:80]!r} in the ledger")
    return run_id


KnownRun = Annotated[str, Depends(known_run)]


@router.get("/runs/{run_id}", response_class=HTMLResponse, dependencies=Readers)
def run(request: Request, run_id: KnownRun, ledger: LedgerDep, settings: SettingsDep) -> HTMLResponse:
    view = operator_actions.run_view(settings.reports_dir, run_id)
    rows = report_rows(view["report"]) if view["report"] else []
    listed = f"{_root(request)}/ui/contacts?{urlencode({'run': run_id})}"
    links = {"claimed by this run": listed}  # each count of the run's contacts: the list filtered to them
    outcomes = (view["report"] or {}).get("outcomes", {})
    links.update({f"outcome: {s}": f"{listed}&{urlencode({'state': s})}" for s in outcomes})
    changed = contact_list.changed_since_report(ledger, run_id)
    return _page(request, "run.html", view=view, rows=rows, links=links, changed=changed)


@router.get("/runs/{run_id}/outcomes.csv", dependencies=Readers)
def run_csv(run_id: KnownRun, ledger: LedgerDep) -> StreamingResponse:
    filename = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    return StreamingResponse(
        operator_actions.run_outcomes_csv(ledger, run_id),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="welcome-outcomes-{filename}.csv"'},
    )


# -- actions -----------------------------------------------------------------------------------------
def _back_to_contact(request: Request, email: str, notice: str) -> RedirectResponse:
    query = urlencode({"email": email, "notice": notice})
    return RedirectResponse(f"{_root(request)}/ui/contact?{query}", status_code=303)


@router.post("/contact/{action}", dependencies=[Depends(can_edit)])
def contact_action(
    request: Request,
    action: str,
    user: GetUserDep,
    ledger: LedgerDep,
    settings: SettingsDep,
    email: Annotated[str, Form()],
    reason: Annotated[str, Form()],
    csrf: Annotated[str, Form()] = "",
    confirm: Annotated[str, Form()] = "",
) -> RedirectResponse:
    check_post(request, csrf)
    actor = user.get_name()
    try:
        if action == "erase" and not same_address(confirm, email):
            raise ValueError("to erase, retype the address exactly in the confirmation field")
        if action == "suppress":
            counts = operator_actions.suppress(ledger, [email], actor, reason)
            notice = (
                "suppressed: never emailed" if counts["suppressed"] else "nothing to do: already suppressed or erased"
            )
        elif action == "release":
            released = operator_actions.release(ledger, email, actor, reason)
            notice = "released: the next run that lists it retries it" if released else "not failed: nothing released"
        elif action == "erase":
            kept = operator_actions.kept_files(settings)
            notice = erased_sentence(operator_actions.erase(ledger, email, actor, reason, kept))
        else:
            raise HTTPException(404, f"no action {action!r}")
    except (operator_actions.InvalidEmail, operator_actions.EraseKeyMissing, ValueError) as exc:
        notice = f"not done: {exc}"
    return _back_to_contact(request, email, notice)


@router.post("/suppressions", dependencies=[Depends(can_edit)])
async def import_suppressions(
    request: Request,
    user: GetUserDep,
    ledger: LedgerDep,
    file: UploadFile,
    reason: Annotated[str, Form()],
    csrf: Annotated[str, Form()] = "",
) -> RedirectResponse:
    check_post(request, csrf)
    try:
        text = (await file.read()).decode("utf-8-sig")
        counts = await run_in_threadpool(
            operator_actions.import_suppressions,
            ledger,
            text.splitlines(),
            user.get_name(),
            reason,
            f"upload {file.filename}",
        )
        notice = f"{file.filename}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
    except (UnicodeDecodeError, operator_actions.EraseKeyMissing, ValueError) as exc:
        notice = f"not imported: {exc}"
    return RedirectResponse(f"{_root(request)}/ui/?{urlencode({'notice': notice})}", status_code=303)
