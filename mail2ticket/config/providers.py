"""Provider presets: IMAP/SMTP hosts, ports, TLS modes, sign-in methods and steps of common providers.

Every preset was checked against the provider's own help page, named in ``docs``. A preset only
fills what an account leaves out: any key set in the account wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mail2ticket.config.model import Account

# How the IMAP login name is made from the e-mail address when the account gives no username.
USERNAME_EMAIL = "email"  # the full address
USERNAME_LOCAL_PART = "local-part"  # the part before the @ (iCloud)


@dataclass(frozen=True)
class OAuthEndpoints:
    """Where a provider's OAuth2 sign-in happens. ``{tenant}`` is replaced by the account's tenant."""

    authorize_url: str
    token_url: str
    scopes: tuple[str, ...]
    device_url: str | None = None  # None: the provider allows no device-code flow for mail
    default_tenant: str | None = None
    needs_client_secret: bool = False
    extra_auth_params: tuple[tuple[str, str], ...] = ()
    docs: str = ""


MICROSOFT_OAUTH_DOCS = (
    "https://learn.microsoft.com/en-us/exchange/client-developer/legacy-protocols/"
    "how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth"
)


def _microsoft(tenant: str) -> OAuthEndpoints:
    base = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0"
    return OAuthEndpoints(
        authorize_url=f"{base}/authorize",
        token_url=f"{base}/token",
        device_url=f"{base}/devicecode",
        scopes=(
            "https://outlook.office.com/IMAP.AccessAsUser.All",
            "https://outlook.office.com/SMTP.Send",
            "offline_access",
        ),
        default_tenant=tenant,
        docs=MICROSOFT_OAUTH_DOCS,
    )


# Google allows only a short list of scopes in its device flow, and https://mail.google.com/ is not
# one of them: Google accounts sign in with the authorization-code flow, pasted back.
GOOGLE_OAUTH = OAuthEndpoints(
    authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
    token_url="https://oauth2.googleapis.com/token",
    scopes=("https://mail.google.com/",),
    device_url=None,
    needs_client_secret=True,
    extra_auth_params=(("access_type", "offline"), ("prompt", "consent")),
    docs="https://developers.google.com/gmail/imap/xoauth2-protocol",
)


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
    sign_in: tuple[str, ...] = ("app_password",)  # what the provider accepts, preferred first
    username_rule: str = USERNAME_EMAIL  # the IMAP login; SMTP always uses the full address
    username: str = "the full e-mail address"
    steps: tuple[str, ...] = field(default_factory=tuple)  # what to do before add-account
    docs: str = ""  # the provider's page these settings were checked against
    oauth: OAuthEndpoints | None = None
    # Words in a refusal that mean "sign-in is fine but IMAP/SMTP is switched off".
    disabled_markers: tuple[str, ...] = ()

    @property
    def needs_app_password(self) -> bool:
        return "app_password" in self.sign_in

    def imap_username(self, email: str) -> str:
        if self.username_rule == USERNAME_LOCAL_PART:
            return email.split("@", 1)[0]
        return email

    def to_dict(self) -> dict:
        data = {
            "name": self.name,
            "title": self.title,
            "imap_host": self.imap_host,
            "imap_port": self.imap_port,
            "imap_security": self.imap_security,
            "smtp_host": self.smtp_host,
            "smtp_port": self.smtp_port,
            "smtp_security": self.smtp_security,
            "sign_in": list(self.sign_in),
            "username": self.username,
            "username_rule": self.username_rule,
            "steps": list(self.steps),
            "docs": self.docs,
            "oauth_flow": None,
        }
        if self.oauth:
            data["oauth_flow"] = "device-code" if self.oauth.device_url else "authorization-code"
            data["oauth_docs"] = self.oauth.docs
        return data


GOOGLE_DISABLED = ("not enabled for imap", "imap access is disabled", "imap is disabled")
MICROSOFT_DISABLED = (
    "user is authenticated but not connected",
    "smtpclientauthentication is disabled",
    "smtp auth is disabled",
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "gmail", "Gmail", "imap.gmail.com", 993, "tls", "smtp.gmail.com", 465, "tls",
            sign_in=("app_password", "oauth2"),
            steps=(
                "Turn on 2-Step Verification for the Google account "
                "(app passwords exist only with it)",
                "Create an app password at https://myaccount.google.com/apppasswords and paste "
                "it here (or sign in with OAuth2: add-account --oauth)",
                "IMAP is always on in Gmail since January 2025; nothing to enable",
            ),
            docs="https://support.google.com/mail/answer/7126229",
            oauth=GOOGLE_OAUTH,
            disabled_markers=GOOGLE_DISABLED,
        ),
        Preset(
            "google-workspace", "Google Workspace", "imap.gmail.com", 993, "tls",
            "smtp.gmail.com", 465, "tls", sign_in=("oauth2", "app_password"),
            steps=(
                "An admin must leave IMAP on for the user (Admin console > Apps > Google "
                "Workspace > Gmail > End User Access)",
                "Sign in with OAuth2 (add-account --oauth, an Internal app of your "
                "organisation), or, where the admin allows 2-Step Verification and app "
                "passwords, create one at https://myaccount.google.com/apppasswords",
            ),
            docs="https://support.google.com/a/answer/105694",
            oauth=GOOGLE_OAUTH,
            disabled_markers=GOOGLE_DISABLED,
        ),
        Preset(
            "yahoo", "Yahoo Mail", "imap.mail.yahoo.com", 993, "tls", "smtp.mail.yahoo.com", 465,
            "tls",
            steps=(
                "Turn on 2-step verification (Account info > Account security)",
                "Generate an app password there (Generate and manage app passwords) and "
                "paste it here",
            ),
            docs="https://help.yahoo.com/kb/SLN4075.html",
        ),
        Preset(
            "aol", "AOL Mail", "imap.aol.com", 993, "tls", "smtp.aol.com", 465, "tls",
            steps=(
                "Turn on 2-step verification (Account info > Account security)",
                "Generate an app password there and paste it here",
            ),
            docs="https://help.aol.com/articles/how-do-i-use-other-email-applications-to-send-and-receive-my-aol-mail",
        ),
        Preset(
            "icloud", "iCloud Mail", "imap.mail.me.com", 993, "tls", "smtp.mail.me.com", 587,
            "starttls",
            username_rule=USERNAME_LOCAL_PART,
            username=(
                "IMAP: the name part of the @icloud.com address (emilyparker, not "
                "emilyparker@icloud.com); SMTP: the full address"
            ),
            steps=(
                "Turn on two-factor authentication for the Apple Account",
                "Create an app-specific password at https://account.apple.com "
                "(Sign-In and Security > App-Specific Passwords) and paste it here",
            ),
            docs="https://support.apple.com/en-us/102525",
        ),
        Preset(
            "outlook", "Outlook.com / Hotmail", "outlook.office365.com", 993, "tls",
            "smtp-mail.outlook.com", 587, "starttls", sign_in=("oauth2",),
            steps=(
                "Turn on IMAP in Outlook.com: Settings > Mail > Forwarding and IMAP > "
                "Let devices and apps use IMAP",
                "Outlook.com accepts no passwords over IMAP/SMTP: register an application in "
                "Microsoft Entra (docs/providers.md) and run 'add-account --oauth'",
            ),
            docs="https://support.microsoft.com/en-us/office/pop-imap-and-smtp-settings-8361e398-8af4-4e97-b147-6c6c4ac95353",
            oauth=_microsoft("consumers"),
            disabled_markers=MICROSOFT_DISABLED,
        ),
        Preset(
            "microsoft365", "Microsoft 365 / Exchange Online", "outlook.office365.com", 993, "tls",
            "smtp.office365.com", 587, "starttls", sign_in=("oauth2",),
            steps=(
                "An admin must allow IMAP and Authenticated SMTP for the mailbox (Microsoft 365 "
                "admin center > Users > Active users > Mail > Manage email apps)",
                "Register an application in Microsoft Entra (docs/providers.md) and run "
                "'add-account --oauth' (basic authentication is being retired)",
            ),
            docs=MICROSOFT_OAUTH_DOCS,
            oauth=_microsoft("organizations"),
            disabled_markers=MICROSOFT_DISABLED,
        ),
        Preset(
            "fastmail", "Fastmail", "imap.fastmail.com", 993, "tls", "smtp.fastmail.com", 465, "tls",
            steps=(
                "Create an app password (Settings > Privacy & Security > Manage app passwords "
                "and access); the normal Fastmail password never works over IMAP",
            ),
            docs="https://www.fastmail.com/help/technical/servernamesandports.html",
        ),
        Preset(
            "zoho", "Zoho Mail (personal @zoho.com)", "imap.zoho.com", 993, "tls", "smtp.zoho.com",
            465, "tls",
            steps=(
                "Enable IMAP: Settings > Mail Accounts > IMAP > IMAP Access",
                "With two-factor authentication on, create an application-specific password",
                "Accounts in another data centre (zoho.eu, zoho.in, zoho.com.au) set imap_host "
                "and smtp_host to that domain's servers",
            ),
            docs="https://www.zoho.com/mail/help/imap-access.html",
            disabled_markers=("enable imap", "imap access is disabled"),
        ),
        Preset(
            "zoho-pro", "Zoho Mail (organisation, own domain)", "imappro.zoho.com", 993, "tls",
            "smtppro.zoho.com", 465, "tls",
            steps=(
                "Enable IMAP: Settings > Mail Accounts > IMAP > IMAP Access (an admin may "
                "have to allow it for the organisation)",
                "With two-factor authentication on, create an application-specific password",
            ),
            docs="https://www.zoho.com/mail/help/imap-access.html",
            disabled_markers=("enable imap", "imap access is disabled"),
        ),
        Preset(
            "gmx", "GMX (gmx.com)", "imap.gmx.com", 993, "tls", "mail.gmx.com", 587, "starttls",
            sign_in=("password",),
            steps=(
                "Enable 'POP3/IMAP access' in the GMX mail settings (E-mail > Settings > "
                "POP3 & IMAP)",
            ),
            docs="https://support.gmx.com/pop-imap/imap/index.html",
        ),
        Preset(
            "gmx-net", "GMX (gmx.net, gmx.de, gmx.at, gmx.ch)", "imap.gmx.net", 993, "tls",
            "mail.gmx.net", 587, "starttls", sign_in=("password",),
            steps=(
                "Enable 'POP3/IMAP Abruf' in the GMX mail settings (E-Mail > Einstellungen > "
                "POP3/IMAP Abruf)",
            ),
            docs="https://hilfe.gmx.net/pop-imap/einschalten.html",
        ),
    ]
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; KeyError if there is none."""
    return PRESETS[name.lower()]


def find_preset(name: str | None) -> Preset | None:
    """The preset called ``name``, or None (no name, or not a preset)."""
    if not name:
        return None
    return PRESETS.get(name.lower())


# Refusals that mean "wrong kind of password" rather than "wrong password".
APP_PASSWORD_MARKERS = (
    "application-specific password required",
    "app password",
    "web browser",  # Gmail: "Please log in via your web browser"
    "basic authentication is disabled",
    "5.7.139",
)


def auth_failure_hint(account: Account, server_text: str = "") -> str:
    """What to do after the server refused the sign-in: specific to the provider and its answer."""
    preset = find_preset(getattr(account, "provider", None))
    text = " ".join(server_text.lower().split())
    name = account.name
    if getattr(account, "auth", "password") == "oauth2":
        return (
            f"the OAuth2 token was refused: run 'mail2ticket accounts sign-in {name}' to sign in "
            "again, and check that the mailbox allows IMAP/SMTP"
        )
    if preset and any(marker in text for marker in preset.disabled_markers):
        return f"{preset.title} says IMAP/SMTP is switched off for this mailbox: " + "; ".join(
            preset.steps
        )
    if preset and preset.sign_in == ("oauth2",):
        return (
            f"{preset.title} accepts no passwords here: sign in with OAuth2 "
            f"(mail2ticket add-account {name} --oauth ..., see docs/providers.md)"
        )
    if preset and preset.needs_app_password:
        steps = "; ".join(preset.steps)
        why = (
            "the provider asks for an app password"
            if any(marker in text for marker in APP_PASSWORD_MARKERS)
            else f"{preset.title} needs an app password, not the account's normal password"
        )
        return (
            f"{why}: {steps}; then run 'mail2ticket accounts set-password {name}' "
            f"(username used: the {'name part of the address' if preset.username_rule != USERNAME_EMAIL else 'full address'})"
        )
    return f"check the username and password (mail2ticket accounts set-password {name})"
