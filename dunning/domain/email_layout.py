"""The HTML part of a reminder email, built from its plain-text body.

One accessible layout (`catalogs/email.html`): tables for old clients, inline CSS only, no remote
images, `lang` and `dir` of the text's locale, the company name, the amount in large type, the
body's paragraphs and one clear button to the billing link (with the link written out below it
for clients that do not show buttons). Every value is HTML-escaped.
"""

from __future__ import annotations

import html
import re
from string import Template

from dunning.domain.locales import babel_locale, email_layout, text_for
from dunning.domain.templates import TemplateContext, render

_PARAGRAPHS = re.compile(r"\n\s*\n")


def _paragraph(text: str, link: str) -> str:
    escaped = html.escape(text.strip())
    if link:
        safe = html.escape(link)
        escaped = escaped.replace(
            safe, f'<a href="{safe}" style="color:#1a56db;word-break:break-all;">{safe}</a>'
        )
    return (
        '<p style="margin:0 0 16px 0;">' + escaped.replace("\n", "<br>\n") + "</p>"
    )


def compose_html(
    subject: str, body: str, ctx: TemplateContext, chain: list[str]
) -> str:
    """The HTML part for an email whose rendered subject and text body are given; `chain` is
    the locale chain of the text (button, footer and `lang` follow its first language)."""
    button, language = text_for(chain, "button")
    fallback, _ = text_for(chain, "link_fallback")
    footer, _ = text_for(chain, "footer")
    locale = babel_locale(chain[0] if chain else language)
    direction = "rtl" if locale.character_order == "right-to-left" else "ltr"
    link = ctx.billing_link
    paragraphs = "\n".join(
        _paragraph(p, link) for p in _PARAGRAPHS.split(body.strip()) if p.strip()
    )
    return Template(email_layout()).substitute(
        lang=html.escape(chain[0] if chain else language),
        dir=direction,
        subject=html.escape(subject),
        preheader=html.escape(subject),
        company=html.escape(ctx.company_name),
        amount=html.escape(ctx.amount),
        paragraphs=paragraphs,
        link=html.escape(link, quote=True),
        link_text=html.escape(link),
        button=html.escape(button),
        fallback=html.escape(fallback),
        footer=html.escape(render(footer, ctx)),
    )


__all__ = ["compose_html"]
