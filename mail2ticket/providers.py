"""Provider presets: IMAP/SMTP hosts, ports, TLS modes and sign-in notes of common mail providers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    imap_host: str
    imap_port: int
    imap_security: str
    smtp_host: str
    smtp_port: int
    smtp_security: str
    sign_in: tuple[str, ...] = ("app_password",)
    username: str = "full email address"
    steps: tuple[str, ...] = field(default_factory=tuple)
    docs: str = ""

    def to_dict(self) -> dict:
        data = asdict(self)
        data["sign_in"] = list(self.sign_in)
        data["steps"] = list(self.steps)
        return data


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "gmail", "Gmail", "imap.gmail.com", 993, "tls", "smtp.gmail.com", 465, "tls",
            sign_in=("app_password", "oauth2"),
            steps=(
                "Turn on 2-Step Verification for the Google account",
                "Create an app password at https://myaccount.google.com/apppasswords",
                "IMAP is always on for Gmail since 2025; nothing to enable",
            ),
            docs="https://support.google.com/mail/answer/7126229",
        ),
        Preset(
            "google-workspace", "Google Workspace", "imap.gmail.com", 993, "tls",
            "smtp.gmail.com", 465, "tls", sign_in=("oauth2", "app_password"),
            steps=(
                "An admin must allow IMAP access and (for app passwords) 2-Step Verification",
                "Create an app password, or sign in with OAuth2 (add-account --oauth)",
            ),
            docs="https://support.google.com/a/answer/105694",
        ),
        Preset(
            "yahoo", "Yahoo Mail", "imap.mail.yahoo.com", 993, "tls", "smtp.mail.yahoo.com", 465, "tls",
            steps=(
                "Turn on 2-step verification in Yahoo Account Security",
                "Generate an app password (Account Security > Generate app password)",
            ),
            docs="https://help.yahoo.com/kb/SLN4075.html",
        ),
        Preset(
            "aol", "AOL Mail", "imap.aol.com", 993, "tls", "smtp.aol.com", 465, "tls",
            steps=(
                "Turn on 2-step verification in AOL Account Security",
                "Generate an app password (Account Security > Generate app password)",
            ),
            docs="https://help.aol.com/articles/how-do-i-use-other-email-applications-to-send-and-receive-my-aol-mail",
        ),
        Preset(
            "icloud", "iCloud Mail", "imap.mail.me.com", 993, "tls", "smtp.mail.me.com", 587, "starttls",
            username="the name part of the @icloud.com address for IMAP (full address for SMTP)",
            steps=(
                "Turn on two-factor authentication for the Apple Account",
                "Create an app-specific password at https://account.apple.com (Sign-In and Security)",
            ),
            docs="https://support.apple.com/en-us/102525",
        ),
        Preset(
            "outlook", "Outlook.com / Hotmail", "outlook.office365.com", 993, "tls",
            "smtp-mail.outlook.com", 587, "starttls", sign_in=("oauth2",),
            steps=(
                "Outlook.com no longer accepts passwords over IMAP: sign in with OAuth2",
                "Register an application in Microsoft Entra and run 'add-account --oauth' (see README)",
            ),
            docs="https://support.microsoft.com/en-us/office/pop-imap-and-smtp-settings-for-outlook-com-d088b986-291d-42b8-9564-9c414e2aa040",
        ),
        Preset(
            "microsoft365", "Microsoft 365 / Exchange Online", "outlook.office365.com", 993, "tls",
            "smtp.office365.com", 587, "starttls", sign_in=("oauth2",),
            steps=(
                "An admin must enable IMAP and SMTP AUTH for the mailbox",
                "Register an application in Microsoft Entra and run 'add-account --oauth' (see README)",
            ),
            docs="https://learn.microsoft.com/en-us/exchange/clients-and-mobile-in-exchange-online/authenticate-an-imap-pop-smtp-application-by-using-oauth",
        ),
        Preset(
            "fastmail", "Fastmail", "imap.fastmail.com", 993, "tls", "smtp.fastmail.com", 465, "tls",
            steps=("Create an app password in Settings > Privacy & Security > App passwords",),
            docs="https://www.fastmail.help/hc/en-us/articles/1500000278342",
        ),
        Preset(
            "zoho", "Zoho Mail", "imap.zoho.com", 993, "tls", "smtp.zoho.com", 465, "tls",
            steps=(
                "Enable IMAP access in Zoho Mail settings",
                "With two-factor authentication on, create an application-specific password",
            ),
            docs="https://www.zoho.com/mail/help/imap-access.html",
        ),
        Preset(
            "gmx", "GMX", "imap.gmx.com", 993, "tls", "mail.gmx.com", 587, "starttls",
            steps=("Enable 'POP3/IMAP access' in the GMX mail settings",),
            docs="https://support.gmx.com/pop-imap/imap/index.html",
        ),
    ]
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; KeyError if there is none."""
    return PRESETS[name.lower()]
