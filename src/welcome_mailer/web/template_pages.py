"""The template page of the ledger UI: every template, one rendered for a row of a contact file (or for
sample values), text and HTML side by side, and "send a test" to an address the operator types.

The HTML is shown in an iframe with an empty ``sandbox`` attribute and the page as ``srcdoc``: no script
runs, no form posts, and the page cannot reach this one's cookies or DOM. Reading needs read access to
welcome_emails, a test send edit access and this session's CSRF token, as every other action
(``welcome_mailer.web.ui``). A file is named as ``csv_path`` is: inside the data roots (local files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode

from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from welcome_mailer import template_tools
from welcome_mailer.contacts import Contact
from welcome_mailer.run_files import InvalidCsvPath, resolve_csv_path
from welcome_mailer.settings import Settings
from welcome_mailer.storage import location
from welcome_mailer.templates import (
    RefusedMessage,
    TemplateError,
    TemplateSource,
    compile_template,
    list_templates,
    load_template,
)
from welcome_mailer.transports import EmailProvider
from welcome_mailer.unsubscribe import UnsubscribeSettings
from welcome_mailer.web.ui import LedgerDep, Readers, SettingsDep, _page, _root, can_edit, check_post

router = APIRouter(prefix="/ui")


def get_transport() -> EmailProvider:
    """The configured provider (``esp_default``), as the send tasks open it. Tests override it."""
    from welcome_mailer.hooks.esp import EspHook

    return EspHook().get_conn()


def get_unsubscribe() -> UnsubscribeSettings:
    return UnsubscribeSettings.from_env()


TransportDep = Annotated[EmailProvider, Depends(get_transport)]
UnsubscribeDep = Annotated[UnsubscribeSettings, Depends(get_unsubscribe)]


def _folder(settings: Settings):
    """The templates folder: a local directory, or an ObjectStoragePath."""
    return location(settings.templates_dir, settings.storage_conn_id)


def _contact(
    settings: Settings,
    source: TemplateSource,
    unsubscribe: UnsubscribeSettings,
    csv_path: str,
    line: int,
    name: str | None,
    email: str | None,
) -> Contact:
    """The row of a file (inside the data roots), or the typed or sample values, with the columns the
    template uses. Raises TemplateError, ValueError, LookupError (the message says what is wrong)."""
    template = compile_template(source, unsubscribe)
    if not csv_path.strip():
        return template_tools.sample_contact(template, name, email)
    path = resolve_csv_path(csv_path, settings.data_roots)
    if not isinstance(path, Path):
        raise InvalidCsvPath("a preview reads a local file: copy the object into a local data root")
    return template_tools.contact_at(path, line, template)


@router.get("/templates", response_class=HTMLResponse, dependencies=Readers)
def templates_page(
    request: Request,
    settings: SettingsDep,
    unsubscribe: UnsubscribeDep,
    name: str = "welcome",
    csv_path: str = "",
    line: int = 1,
    contact_name: str | None = None,
    contact_email: str | None = None,
    notice: str = "",
) -> HTMLResponse:
    shown, error = None, None
    try:
        source = load_template(name, _folder(settings))
        contact = _contact(settings, source, unsubscribe, csv_path, line, contact_name, contact_email)
        shown = template_tools.preview(source, contact, unsubscribe)
    except (TemplateError, ValueError, LookupError, OSError) as exc:
        error = str(exc)
    return _page(
        request,
        "templates.html",
        templates=list_templates(_folder(settings)),
        folder=settings.templates_dir,
        chosen=name,
        csv_path=csv_path,
        line=line,
        contact_name=contact_name,
        contact_email=contact_email,
        shown=shown,
        error=error,
        notice=notice,
    )


@router.post("/templates/test-send", dependencies=[Depends(can_edit)])
async def test_send(
    request: Request,
    user: GetUserDep,
    ledger: LedgerDep,
    settings: SettingsDep,
    transport: TransportDep,
    unsubscribe: UnsubscribeDep,
    name: Annotated[str, Form()],
    to: Annotated[str, Form()],
    csv_path: Annotated[str, Form()] = "",
    line: Annotated[int, Form()] = 1,
    contact_name: Annotated[str | None, Form()] = None,
    contact_email: Annotated[str | None, Form()] = None,
    csrf: Annotated[str, Form()] = "",
) -> RedirectResponse:
    check_post(request, csrf)

    def send() -> str:
        source = load_template(name, _folder(settings))
        contact = _contact(settings, source, unsubscribe, csv_path, line, contact_name, contact_email)
        sent = template_tools.test_send(ledger, transport, source, contact, to, user.get_name(), unsubscribe)
        if sent["provider_message_id"] is None:
            return f"test send to {sent['to']} refused by the provider: {sent['error']}"
        return f"test sent to {sent['to']} (provider id {sent['provider_message_id']}); recorded in the audit trail"

    try:
        notice = await run_in_threadpool(send)
    except (TemplateError, RefusedMessage, ValueError, LookupError, OSError) as exc:
        notice = f"not sent: {exc}"
    finally:
        transport.close()
    query = {"name": name, "csv_path": csv_path, "line": line, "notice": notice}
    query |= {k: v for k, v in (("contact_name", contact_name), ("contact_email", contact_email)) if v is not None}
    return RedirectResponse(f"{_root(request)}/ui/templates?{urlencode(query)}", status_code=303)
