"""An encrypted session can use the key the TypeScript SDK uses for the same user.

The SDK signs ``encrypted_session_init`` with the key it derives from the user's S5 seed
phrase (S5.md 6.5) and names it as ``recoveryPublicKey``, so its hosts seal checkpoint
deltas to it. ``SessionManager(recovery_key=sdk_encryption_key(sdk_seed_phrase(key)))``
makes a Python session do the same: the deltas open with the SDK's key and not with the
wallet key (the default without ``recovery_key``). A real reference host with a key and an
S5 store (LocalPortal) on 127.0.0.1.
"""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from langchain_fabstir.checkpoints import address_of
from langchain_fabstir.checkpoints.published import fetch_host_checkpoints
from langchain_fabstir.errors import DecryptionFailedError
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.portal import LocalPortal
from langchain_fabstir.s5 import sdk_encryption_key, sdk_seed_phrase
from langchain_fabstir.sessions import SessionManager
from langchain_fabstir.wire.encryption import RecoveryKey

HOST_KEY = "0x" + "42" * 32
HOST = address_of(HOST_KEY)
USER_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # Anvil #0
SDK_PUBLIC = "0x027090051013700e1ba5a57c9de626363e0ed9808677097cb08638f6f15cdd7ef7"  # S5.md 6.4
PHRASE = (
    "sign weight spy quality sudden minute pizza great fear "
    "adapt nobody evident control alive crime"
)


@pytest.mark.parametrize("form", ["secret", "recovery_key"])
async def test_sessions_use_the_sdks_recovery_key(portal: LocalPortal, form: str) -> None:
    sdk_key: SecretStr = sdk_encryption_key(sdk_seed_phrase(USER_KEY))
    given = sdk_key if form == "secret" else RecoveryKey(sdk_key.get_secret_value())
    engine = EchoEngine([f"heron{i} " for i in range(20)], fill=True)
    host = ReferenceHost(
        engine,
        rate_limit_per_minute=None,
        host_key=HOST_KEY,
        portal_url=portal.url,
        s5_seed_phrase=PHRASE,
    )
    async with host:
        async with SessionManager(
            host_url=host.url, private_key=USER_KEY, recovery_key=given
        ) as manager:
            s = await manager.create_session(model="echo")
            await manager.prompt(s.id, "egret", max_tokens=150)
            assert s.encrypted and s.recovery_key is not None
            assert s.recovery_key.public_key == SDK_PUBLIC
            assert sdk_key.get_secret_value() not in repr(manager)
        # Another process (or the SDK) holding the phrase opens the deltas ...
        later = await fetch_host_checkpoints(
            host.url,
            s.id,
            portal=portal.url,
            host_address=HOST,
            recovery_key=RecoveryKey(
                sdk_encryption_key(sdk_seed_phrase(USER_KEY)).get_secret_value()
            ),
        )
        assert later.encrypted_deltas == 1 and later.messages[0]["content"] == "egret"
        # ... and the wallet key, the default recovery key without recovery_key=, does not.
        with pytest.raises(DecryptionFailedError):
            await fetch_host_checkpoints(
                host.url,
                s.id,
                portal=portal.url,
                host_address=HOST,
                recovery_key=RecoveryKey(USER_KEY),
            )
