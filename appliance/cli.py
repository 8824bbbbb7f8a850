"""The `appliance` command: serve, and manage domains, accounts and aliases.

Every command takes the data directory from --data or APPLIANCE_DATA. Bad
input gets one line on stderr and exit code 1, and changes nothing.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from collections.abc import Callable

from appliance import __version__, config
from appliance.addresses import (
    AddressError,
    normalize_address,
    normalize_alias_source,
    normalize_domain,
)
from appliance.passwords import WeakPassword, hash_password
from appliance.store import StoreError, Transaction, open_store


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="appliance", description="A mail server for a small box.")
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    parser.add_argument(
        "--data", metavar="DIR", help="data directory (default: $APPLIANCE_DATA or ./var)"
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser("serve", help="run the mail server")
    serve.add_argument("--dev", action="store_true", help="listen on loopback dev ports")
    serve.set_defaults(run=_serve)

    setup = commands.add_parser("setup-code", help="print the code the web setup page asks for")
    setup.set_defaults(run=_setup_code)

    domain = commands.add_parser("domain", help="manage mail domains").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    p = domain.add_parser("add", help="add a domain")
    p.add_argument("name")
    p.set_defaults(run=_domain_add)
    domain.add_parser("list", help="list domains").set_defaults(run=_domain_list)
    p = domain.add_parser("remove", help="remove a domain that has no accounts")
    p.add_argument("name")
    p.set_defaults(run=_domain_remove)

    dkim = commands.add_parser("dkim", help="DKIM keys of a domain").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    p = dkim.add_parser("show", help="print the DNS TXT records to publish")
    p.add_argument("domain")
    p.set_defaults(run=_dkim_show)
    p = dkim.add_parser("rotate", help="make new keys; the old ones keep verifying for a while")
    p.add_argument("domain")
    p.set_defaults(run=_dkim_rotate)

    queue = commands.add_parser("queue", help="the outbound queue").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    queue.add_parser("list", help="what waits to leave, and why").set_defaults(run=_queue_list)
    for action, run, doc in (
        ("show", _queue_show, "one entry and the header of its message"),
        ("delete", _queue_delete, "drop an entry without telling its sender"),
        ("bounce", _queue_bounce, "give up on an entry now: its sender gets a bounce"),
    ):
        p = queue.add_parser(action, help=doc)
        p.add_argument("id", type=int)
        p.set_defaults(run=run)
    p = queue.add_parser("retry", help="try an entry (or every entry) again at once")
    p.add_argument("id", type=int, nargs="?")
    p.set_defaults(run=_queue_retry)

    update = commands.add_parser("update", help="signed system updates").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    p = update.add_parser("install", help="install a bundle into the other slot, boot it next")
    p.add_argument("source", metavar="FILE|URL")
    p.add_argument(
        "--reboot", metavar="now|HH:MM", help="restart into it at once or at that time (UTC)"
    )
    p.set_defaults(run=_update_install)
    p = update.add_parser(
        "install-incoming", help="as root: install the bundle the service handed over"
    )
    p.set_defaults(run=_update_install_incoming)
    p = update.add_parser("booted", help="after boot-complete: record booted good or rolled back")
    p.set_defaults(run=_update_booted)
    p = update.add_parser("status", help="the running slot, the last update, a rollback")
    p.set_defaults(run=_update_status)
    p = update.add_parser("check", help="what the signed update index ([update] url) offers")
    p.set_defaults(run=_update_check)
    p = update.add_parser("keygen", help="make a signing key pair (KEY and KEY.pub)")
    p.add_argument("key", metavar="KEY")
    p.set_defaults(run=_update_keygen)
    p = update.add_parser("sign", help="make a bundle of a root image and its boot files")
    p.add_argument("rootfs", metavar="ROOT_IMAGE")
    p.add_argument("--key", required=True, help="the Ed25519 private key (PEM)")
    p.add_argument("--out", required=True, metavar="BUNDLE")
    p.add_argument("--board", required=True)
    p.add_argument("--bundle-version", default=__version__, metavar="VERSION")
    p.add_argument("--min-version", default="0", metavar="VERSION")
    p.add_argument("--product", default="appliance")
    p.add_argument("--boot-file", action="append", default=[], metavar="FILE")
    p.add_argument("--add-key", action="append", default=[], metavar="PUBLIC_KEY")
    p.add_argument("--revoke-key", action="append", default=[], metavar="KEY_ID")
    p.set_defaults(run=_update_sign)

    user = commands.add_parser("user", help="manage accounts").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    for action, run, doc in (
        ("add", _user_add, "add an account"),
        ("passwd", _user_passwd, "set an account's password"),
    ):
        p = user.add_parser(action, help=doc)
        p.add_argument("address")
        p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
        p.set_defaults(run=run)
    user.add_parser("list", help="list accounts").set_defaults(run=_user_list)
    p = user.add_parser("remove", help="remove an account and its mail")
    p.add_argument("address")
    p.set_defaults(run=_user_remove)

    alias = commands.add_parser("alias", help="manage aliases").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    p = alias.add_parser("add", help="add an alias (SOURCE may be @domain: catch-all)")
    p.add_argument("source")
    p.add_argument("targets", nargs="+", metavar="target")
    p.set_defaults(run=_alias_add)
    alias.add_parser("list", help="list aliases").set_defaults(run=_alias_list)
    p = alias.add_parser("remove", help="remove an alias, or only some of its targets")
    p.add_argument("source")
    p.add_argument("targets", nargs="*", metavar="target")
    p.set_defaults(run=_alias_remove)
    return parser


def _serve(args) -> int:
    from appliance.service import serve  # the server's imports are not needed by the CLI

    settings = config.load(config.data_dir_from(args.data), dev=args.dev)
    return serve(settings)


def _setup_code(args) -> int:
    from appliance.web import setup_code

    data_dir = config.data_dir_from(args.data)
    if _store_apply(args, lambda txn: txn.meta(setup_code.SETUP_DONE)):
        raise UsageError("setup is done; the setup code is gone for good")
    print(setup_code.ensure(data_dir))
    return 0


def _store_apply(args, operation: Callable[[Transaction], object]):
    data_dir = config.data_dir_from(args.data)
    store = open_store(data_dir, config.load(data_dir).store)
    try:
        return store.apply(operation)
    finally:
        store.close()


def _read_password(args) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise UsageError("no terminal to ask for a password; use --password-stdin")
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise UsageError("the passwords differ")
    return password


def _domain_add(args) -> int:
    from appliance.mailauth import dkim

    name = normalize_domain(args.name)
    _store_apply(args, lambda txn: txn.add_domain(name))
    dkim.make_keys(config.data_dir_from(args.data), name)
    print(f"added domain {name}; its DKIM records: appliance dkim show {name}")
    return 0


def _known_domain(args) -> str:
    name = normalize_domain(args.domain)
    if _store_apply(args, lambda txn: txn.domain(name)) is None:
        raise UsageError(f"no domain {name} (add it with: appliance domain add {name})")
    return name


def _dkim_show(args) -> int:
    from appliance.mailauth import dkim

    name = _known_domain(args)
    data_dir = config.data_dir_from(args.data)
    dkim.make_keys(data_dir, name)  # a domain added before DKIM existed gets its keys now
    _print_dkim_records(data_dir, name)
    return 0


def _dkim_rotate(args) -> int:
    from appliance.mailauth import dkim

    name = _known_domain(args)
    data_dir = config.data_dir_from(args.data)
    made = dkim.rotate(data_dir, name)
    removed = dkim.remove_retired(data_dir, name, dkim.RETIRED_KEEP_DAYS)
    print(f"new selectors {', '.join(s.name for s in made)} sign from now on; publish them:")
    _print_dkim_records(data_dir, name)
    for selector in removed:
        print(f"; retired and removed: {selector.name}._domainkey.{name} can go from DNS")
    return 0


def _print_dkim_records(data_dir, name: str) -> None:
    from appliance.mailauth import dkim

    active = {s.name for s in dkim.active_selectors(data_dir, name)}
    for record in dkim.dns_records(data_dir, name):
        selector = record.name.split(".", 1)[0]
        state = "signing" if selector in active else "retired, still verifying"
        print(f"; {selector}: {state}")
        print(record.zone_line)


def _domain_list(args) -> int:
    for domain in _store_apply(args, Transaction.domains):
        print(domain.name)
    return 0


def _domain_remove(args) -> int:
    name = normalize_domain(args.name)
    _store_apply(args, lambda txn: txn.remove_domain(name))
    print(f"removed domain {name}")
    return 0


def _user_add(args) -> int:
    address = normalize_address(args.address)
    password_hash = hash_password(_read_password(args))
    _store_apply(args, lambda txn: txn.add_account(address, password_hash))
    print(f"added account {address}")
    return 0


def _user_passwd(args) -> int:
    address = normalize_address(args.address)
    password_hash = hash_password(_read_password(args))
    _store_apply(args, lambda txn: txn.set_password(address, password_hash))
    print(f"password changed for {address}")
    return 0


def _user_list(args) -> int:
    for account in _store_apply(args, Transaction.accounts):
        print(account.address)
    return 0


def _user_remove(args) -> int:
    address = normalize_address(args.address)
    _store_apply(args, lambda txn: txn.remove_account(address))
    print(f"removed account {address} and its mail")
    return 0


def _alias_add(args) -> int:
    source = normalize_alias_source(args.source)
    targets = [normalize_address(t) for t in args.targets]
    alias = _store_apply(args, lambda txn: txn.add_alias(source, targets))
    print(f"alias {alias.source} -> {', '.join(alias.targets)}")
    return 0


def _alias_list(args) -> int:
    for alias in _store_apply(args, Transaction.aliases):
        print(f"{alias.source} -> {', '.join(alias.targets)}")
    return 0


def _alias_remove(args) -> int:
    source = normalize_alias_source(args.source)
    targets = [normalize_address(t) for t in args.targets]
    _store_apply(args, lambda txn: txn.remove_alias(source, targets))
    print(f"removed alias {source}" + (f" targets {', '.join(targets)}" if targets else ""))
    return 0


def _queue_list(args) -> int:
    now = time.time()
    for item in _store_apply(args, Transaction.queued):
        wait = max(0, round(item.next_attempt - now))
        age = round(now - item.created)
        print(
            f"{item.id} age={age}s attempts={item.attempts} next-in={wait}s "
            f"from=<{item.sender}> to={','.join(item.recipients)}"
        )
        if item.last_error:
            print(f"    last error: {item.last_error}")
    return 0


def _queued(txn: Transaction, queue_id: int):
    item = txn.queued_message(queue_id)
    if item is None:
        raise UsageError(f"no queued message {queue_id}")
    return item


def _queue_show(args) -> int:
    def read(txn):
        item = _queued(txn, args.id)
        body = bytes(txn.blob(item.blob_id) or b"")
        return item, body

    item, body = _store_apply(args, read)
    print(f"id: {item.id}\nfrom: <{item.sender}>\nto: {', '.join(item.recipients)}")
    print(f"attempts: {item.attempts}\nlast error: {item.last_error or '-'}\n")
    header = (bytes(item.head) + body).split(b"\r\n\r\n", 1)[0]
    print(header.decode("utf-8", "replace").replace("\r\n", "\n"))
    return 0


def _queue_retry(args) -> int:
    count = _store_apply(args, lambda txn: txn.queue_retry(args.id, time.time()))
    print(f"{count} queued message(s) due now")
    return 0


def _queue_delete(args) -> int:
    item = _store_apply(args, lambda txn: txn.queue_remove(args.id))
    print(f"deleted queued message {item.id} to {', '.join(item.recipients)}")
    return 0


def _queue_bounce(args) -> int:
    from appliance.delivery.bounce import bounce_now

    data_dir = config.data_dir_from(args.data)
    hostname = config.load(data_dir).hostname
    item = _store_apply(args, lambda txn: bounce_now(txn, args.id, hostname, time.time()))
    print(f"bounced queued message {item.id}; <{item.sender or ''}> is told")
    return 0


def _update_install(args) -> int:
    from pathlib import Path

    from appliance.update import handoff, install
    from appliance.update.bundle import BundleError
    from appliance.update.keys import KeyringError

    settings = config.load(config.data_dir_from(args.data))
    update = settings.update
    if "://" in args.source:
        chunks = install.url_chunks(args.source, update.chunk_size, update.download_timeout)
    else:
        chunks = install.file_chunks(Path(args.source), update.chunk_size)
    try:
        reboot = handoff.reboot_choice(args.reboot)
        with handoff.receiver(update, settings.data_dir, reboot) as receiver:
            for chunk in chunks:
                receiver.feed(chunk)
            done = receiver.finish()
    except (BundleError, install.InstallError, KeyringError) as refusal:
        raise UsageError(f"update refused: {refusal}") from None
    if isinstance(done, handoff.Handed):
        print(
            f"checked {done.version}: handed to the installer, which writes it into the "
            "other slot now; `appliance update status` says how it went"
        )
        return 0
    print(
        f"installed {done.version} into slot {done.slot}: it starts at the next reboot, "
        f"and after {update.tries} failed boots the box goes back to {__version__}"
    )
    handoff.restart(update, reboot)
    return 0


def _update_install_incoming(args) -> int:
    from appliance.service import setup_logging
    from appliance.update import handoff, install
    from appliance.update.bundle import BundleError
    from appliance.update.keys import KeyringError

    setup_logging()  # the installer's steps go to the journal, as the service's do
    settings = config.load(config.data_dir_from(args.data))
    try:
        done = handoff.install_incoming(settings.update, settings.data_dir)
    except (BundleError, install.InstallError, KeyringError) as refusal:
        raise UsageError(f"update refused: {refusal}") from None
    if done is not None:
        print(f"installed {done.version} into slot {done.slot}")
    return 0


def _update_booted(args) -> int:
    from appliance.service import setup_logging
    from appliance.update import install

    setup_logging()
    settings = config.load(config.data_dir_from(args.data))
    recorded = install.record_boot(settings.update, settings.data_dir)
    if recorded is not None:
        print(f"update {recorded['version']} in slot {recorded['slot']}: {recorded['result']}")
    return 0


def _update_status(args) -> int:
    from appliance.update import install

    settings = config.load(config.data_dir_from(args.data))
    found = install.status(settings.update, settings.data_dir)
    print(f"running: {found.running_version} from slot {found.running_slot or '?'}")
    print(f"highest version installed: {found.highest_version}")
    for slot, entry in sorted(found.entries.items()):
        tries = "good" if entry.tries_left is None else f"{entry.tries_left} tries left"
        print(f"slot {slot}: {entry.path.name} ({tries})")
    print(found.summary)
    return 0


def _update_check(args) -> int:
    import asyncio

    import aiohttp

    from appliance.update import index

    settings = config.load(config.data_dir_from(args.data))
    try:
        offers, newest = asyncio.run(index.check(settings.update, settings.data_dir))
    except (ValueError, OSError, aiohttp.ClientError) as error:  # OSError: timeouts too
        raise UsageError(f"update check failed: {error or type(error).__name__}") from None
    for offer in offers:
        print(f"offered: {offer.version} for {offer.product} {offer.board}: {offer.url}")
    if newest is None:
        print(f"nothing newer for this box: it runs {__version__}")
    else:
        print(f"available: {newest.version} ({newest.size} bytes): {newest.url}")
        print(f"install it with: appliance update install {newest.url}")
    return 0


def _update_keygen(args) -> int:
    from pathlib import Path

    from appliance.update import keys

    key_id = keys.generate(Path(args.key))
    print(f"key {key_id}: keep {args.key} off the box and out of the repository;")
    print(f"boxes trust it once {keys.public_path(Path(args.key))} is in their keyring")
    return 0


def _update_sign(args) -> int:
    import os
    from pathlib import Path

    from appliance.update import bundle, keys

    files = [Path(args.rootfs), *map(Path, args.boot_file)]
    names = [bundle.ROOTFS, *(path.name for path in files[1:])]
    epoch = os.environ.get("SOURCE_DATE_EPOCH")  # reproducible builds stamp their commit time
    try:
        key = keys.load_private(Path(args.key))
        manifest = bundle.Manifest(
            product=args.product,
            board=args.board,
            version=args.bundle_version,
            min_version=args.min_version,
            build_date=bundle.build_date(float(epoch) if epoch else None),
            parts=tuple(bundle.describe_file(n, p) for n, p in zip(names, files, strict=True)),
            rotation=keys.Rotation(
                add=tuple(keys.load_public(Path(p)) for p in args.add_key),
                revoke=tuple(args.revoke_key),
            ),
        )
    except ValueError as problem:  # a bad key file, version or file name
        raise UsageError(str(problem)) from None
    bundle.write_bundle(Path(args.out), manifest, key, files)
    signer = keys.key_id(key.public_key())
    print(f"{args.out}: {manifest.version} for {manifest.board}, signed by key {signer}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        return args.run(args)
    except (UsageError, AddressError, WeakPassword, StoreError, config.ConfigError) as error:
        print(f"appliance: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(
            f"appliance: error: {error.strerror or error}: {error.filename or ''}", file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        return 130
