"""Templates: loading, the built-in text's bytes, rendering, escaping, the subject's guarantee, the checks."""

from __future__ import annotations

import re

import pytest
from jinja2 import StrictUndefined

from tests.support.templates import write_template
from welcome_mailer.contacts import FIXED_COLUMNS, Contact
from welcome_mailer.greeting import SUBJECT, welcome_text
from welcome_mailer.templates import (
    BUILTIN,
    WELCOME,
    CompiledTemplate,
    RefusedMessage,
    TemplateError,
    TemplateSource,
    compile_template,
    list_templates,
    load_template,
)
from welcome_mailer.unsubscribe import UnsubscribeSettings

NAMES = ["Ann", "", "Zoë Ångström", "<b>x</b>", "{{ email }}", "O'Brien, Jr.", "a" * 100, "x % y {% raw %}"]


@pytest.mark.parametrize("name", NAMES)
def test_the_builtin_template_renders_todays_bytes(name):
    """The default output is byte for byte greeting.welcome_text's, through Jinja (the template's own
    meaning) and through the fast path the pipeline uses."""
    fast = compile_template(WELCOME)
    by_jinja = CompiledTemplate(WELCOME, UnsubscribeSettings())
    for compiled in (fast, by_jinja):
        rendered = compiled.render("a@example.com", name)
        assert rendered.subject.encode() == SUBJECT.encode() == b"Welcome!"
        assert rendered.text.encode() == welcome_text(name).encode()
        assert rendered.html is None
    assert fast.render("a@example.com", "Ann").text == "Hi Ann, Welcome!"
    assert fast.render("a@example.com", "").text == "Hi there, Welcome!"


def test_the_builtin_is_found_without_a_folder_and_a_folder_may_replace_it(tmp_path):
    assert load_template(BUILTIN, None) is WELCOME
    assert load_template(BUILTIN, tmp_path / "none") is WELCOME
    write_template(tmp_path, "welcome", "Hello!\n", "Hello {{ name }}\n")
    mine = load_template(BUILTIN, tmp_path)
    assert (mine.subject, mine.text) == ("Hello!", "Hello {{ name }}\n")
    assert mine.hash != WELCOME.hash


def test_list_and_load_from_the_folder(tmp_path):
    write_template(tmp_path, "spring", "Hi {{ name }}\n", "Text\n", "<p>Html</p>\n")
    (tmp_path / "not-a-template").mkdir()
    names = [t.name for t in list_templates(tmp_path)]
    assert names == ["spring", "welcome"]
    spring = load_template("spring", tmp_path)
    assert spring.html == "<p>Html</p>\n" and spring.subject == "Hi {{ name }}"
    assert len(spring.hash) == 64 and spring.version == spring.hash[:12]


@pytest.mark.parametrize("name", ["nope", "../etc", "", "a/b"])
def test_an_unknown_or_unsafe_name_is_refused(tmp_path, name):
    with pytest.raises(TemplateError):
        load_template(name, tmp_path)


def test_a_template_without_its_text_body_is_refused(tmp_path):
    directory = tmp_path / "half"
    directory.mkdir()
    (directory / "subject.txt").write_text("x")
    with pytest.raises(TemplateError, match=r"lacks body\.txt"):
        load_template("half", tmp_path)


def test_variables_are_each_contacts_own_values():
    source = TemplateSource("t", "For {{ name }}", "Hi {{ name }} <{{ email }}>", "<p>{{ name }}</p>")
    compiled = compile_template(source)
    ann = compiled.render("ann@example.com", "Ann")
    bob = compiled.render("bob@example.com", "Bob")
    assert (ann.subject, ann.text, ann.html) == ("For Ann", "Hi Ann <ann@example.com>", "<p>Ann</p>")
    assert (bob.subject, bob.text, bob.html) == ("For Bob", "Hi Bob <bob@example.com>", "<p>Bob</p>")


def test_html_is_escaped_and_text_is_not():
    compiled = compile_template(TemplateSource("t", "Hi", "Hi {{ name }}", "<p>Hi {{ name }}</p>"))
    rendered = compiled.render("a@example.com", "<script>alert(1)</script>")
    assert rendered.html == "<p>Hi &lt;script&gt;alert(1)&lt;/script&gt;</p>"
    assert "<script>" not in rendered.html
    assert rendered.text == "Hi <script>alert(1)</script>"


def test_the_sandbox_refuses_unsafe_attribute_access():
    compiled = compile_template(TemplateSource("t", "Hi", "{{ name.__class__.__mro__ }}"))
    with pytest.raises(RefusedMessage):
        compiled.render("a@example.com", "Ann")


def test_a_missing_value_is_refused_and_a_default_greets_instead():
    strict = compile_template(TemplateSource("t", "Hi", "Hi {{ name }}"))
    with pytest.raises(RefusedMessage, match=r"missing value.*name"):
        strict.render("a@example.com", "")
    kind = compile_template(TemplateSource("t", "Hi", 'Hi {{ name | default("friend") }}'))
    assert kind.render("a@example.com", "").text == "Hi friend"


@pytest.mark.parametrize("subject", ["Hi\r\nBcc: evil@example.com", "Hi\nX: y", "Hi {{ name }}\rX: y", "tab\there"])
def test_a_subject_with_a_line_break_is_refused(subject):
    compiled = compile_template(TemplateSource("t", subject, "body"))
    with pytest.raises(RefusedMessage, match="subject"):
        compiled.render("a@example.com", "Ann")


def test_a_syntax_error_names_the_file_and_line(tmp_path):
    write_template(tmp_path, "broken", "Hi\n", "line one\nline two {% endif %}\nline three\n")
    source = load_template("broken", tmp_path)
    with pytest.raises(TemplateError, match=r"broken/body\.txt, line 2"):
        compile_template(source)
    write_template(tmp_path, "broken-html", "Hi\n", "ok\n", "<p>\n{% if name %}\n</p>\n")
    with pytest.raises(TemplateError, match=r"broken-html/body\.html, line"):
        compile_template(load_template("broken-html", tmp_path))


def test_a_column_the_file_lacks_fails_with_its_line(tmp_path):
    write_template(tmp_path, "shoes", "Hi\n", "Hi {{ name }}\nYour size: {{ shoe_size }}\n{{ city }}")
    compiled = compile_template(load_template("shoes", tmp_path))  # any column may exist: the file says
    assert compiled.columns == ("city", "shoe_size")
    compiled.check_columns(("name", "email", "city", "shoe_size"), "shoes.csv")
    with pytest.raises(
        TemplateError,
        match=r"shoes/body\.txt, line 2: no contact has a value for shoe_size: c\.csv has no such column "
        r"\(its columns: name, email, phone, street, city, state, zip\)",
    ):
        compiled.check_columns(FIXED_COLUMNS, "c.csv")


def test_jinjas_own_globals_are_no_column():
    compiled = compile_template(TemplateSource("t", "Hi", "{% for i in range(2) %}{{ city }}{% endfor %}"))
    assert compiled.columns == ("city",)


def test_every_column_of_the_row_is_a_variable():
    source = TemplateSource("t", "{{ name }} in {{ city }}", "{{ street }}, {{ zip }} {{ city }} ({{ phone }})")
    compiled = compile_template(source, None)
    fields = {"city": "San Diego", "street": "1 Main St", "zip": "92101", "phone": "555"}
    rendered = compiled.render("a@example.com", "Ann", fields=fields)
    assert (rendered.subject, rendered.text) == ("Ann in San Diego", "1 Main St, 92101 San Diego (555)")
    message = compiled.message("a@example.com", "Ann", "k", {**fields, "city": "Paris"})
    assert message.subject == "Ann in Paris"
    with pytest.raises(RefusedMessage, match="'zip' is undefined"):
        compiled.render("a@example.com", "Ann", fields={"city": "x", "street": "y", "phone": "z"})


def test_screen_rejects_a_row_without_a_column_the_template_needs():
    compiled = compile_template(TemplateSource("t", "Hi", "{{ city }} {{ zip | default('-') }}"))
    contacts = [
        Contact("a@example.com", "Ann", 2, {"city": "Paris"}),
        Contact("b@example.com", "Bob", 3, {"zip": "1"}),
        Contact("c@example.com", "", 4, {"city": "Lyon", "zip": "2"}),
        Contact("d@example.com", "Dee", 5),
    ]
    kept, rejected = compiled.screen(contacts)
    assert [c.email for c in kept] == ["a@example.com", "c@example.com"]
    assert [r.line_no for r in rejected] == [3, 5]
    assert all("missing value ('city' is undefined)" in r.reason for r in rejected)


def test_unsubscribe_url_only_when_configured():
    source = TemplateSource("t", "Hi", "Leave: {{ unsubscribe_url }}")
    with pytest.raises(TemplateError, match="unsubscribe_url"):
        compile_template(source)
    settings = UnsubscribeSettings("https://mail.example.com/welcome-mailer/unsubscribe", "s3cret")
    text = compile_template(source, settings).render("a@example.com", "").text
    assert text.startswith("Leave: https://mail.example.com/welcome-mailer/unsubscribe?token=")


def test_compiled_once_per_content():
    source = TemplateSource("t", "Hi", "Hi {{ email }}")
    assert compile_template(source) is compile_template(TemplateSource("t", "Hi", "Hi {{ email }}"))
    assert compile_template(source) is not compile_template(TemplateSource("t", "Hi", "Hello {{ email }}"))


def test_screen_rejects_the_contacts_a_template_cannot_greet():
    compiled = compile_template(TemplateSource("t", "Hi {{ name }}", "Hi {{ name }}"))
    contacts = [Contact("a@example.com", "Ann", 2), Contact("b@example.com", "", 3), Contact("c@example.com", "C", 4)]
    kept, rejected = compiled.screen(contacts)
    assert [c.email for c in kept] == ["a@example.com", "c@example.com"]
    assert [(r.line_no, r.raw) for r in rejected] == [(3, ", b@example.com")]
    assert "missing value" in rejected[0].reason and "name" in rejected[0].reason
    everyone = compile_template(WELCOME).screen(contacts)
    assert everyone == (contacts, [])


def test_messages_refuse_per_message_and_keep_order():
    """A need that depends on a value's content is only found at send time: that message is refused."""
    compiled = compile_template(TemplateSource("t", "Hi", "{% if email == 'x@example.com' %}{{ name }}{% endif %}ok"))
    messages, refused = compiled.messages([("a@example.com", "", "k1", None), ("x@example.com", "", "k2", None)])
    assert [(m.to, m.text, m.idempotency_key) for m in messages] == [("a@example.com", "ok", "k1")]
    assert list(refused) == [1] and "name" in refused[1]


SIMPLE_PARTS = [
    "",
    "plain text only\n",
    "Hi {{ name }}, {{ email }}!\r\nline two\n\n",
    "Hi {{ name | default('there') }} {{ name|d(\"x\") }}{# a comment #}{% raw %}{{ raw }}{% endraw %}",
    "{{ email }}{{ name }}",
    "<p class=\"x\">Hi {{ name | default('<b>there</b> & co') }}</p>\n",
]
NOT_SIMPLE = [
    "{% if name %}{{ name }}{% endif %}",
    "{{ name | upper }}",
    "{{ name | default('x', true) }}",
    "{{ 'a' }}",
]


@pytest.mark.parametrize("content", SIMPLE_PARTS)
@pytest.mark.parametrize("autoescape", [False, True])
def test_the_joined_segments_render_what_jinja_renders(content, autoescape):
    """Text and plain variables are rendered without Jinja's machinery (a million messages' worth of
    time): the same text as Jinja's, for every name, and the same refusal for a missing value."""
    from jinja2 import UndefinedError
    from jinja2.sandbox import SandboxedEnvironment

    from welcome_mailer.templates import _Part, _segments

    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=autoescape)
    part = _Part(env.from_string(content), _segments(env.parse(content)), autoescape)
    assert part.segments is not None
    for name in [*NAMES, "<script>alert(1)</script>", "a & b \"'"]:
        values = {"email": "a@example.com", **({"name": name} if name else {})}
        try:
            expected = env.from_string(content).render(values)
        except UndefinedError as exc:
            with pytest.raises(UndefinedError, match=re.escape(exc.message)):
                part.render(values)
            continue
        assert part.render(values) == expected


@pytest.mark.parametrize("content", NOT_SIMPLE)
def test_anything_else_is_rendered_by_jinja(content):
    from jinja2.sandbox import SandboxedEnvironment

    from welcome_mailer.templates import _segments

    assert _segments(SandboxedEnvironment().parse(content)) is None
    compiled = compile_template(TemplateSource("t", "Hi", content))
    assert compiled.render("a@example.com", "ann").text in ("ann", "ANN", "a")
