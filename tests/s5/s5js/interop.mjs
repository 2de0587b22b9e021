// Drive the real s5.js FS5 against an S5 portal's HTTP API (tests/s5/test_s5js_interop.py).
//
// Usage:  S5_SEED_PHRASE="<15 words>" node interop.mjs <portal-url> < ops.json > results.json
//
// ops.json is a JSON list of operations, run in order:
//   {"op": "put",  "path": "home/a.txt", "text": "..."}             (s5.js stores UTF-8 text)
//   {"op": "put",  "path": "home/b.bin", "base64": "...", "mediaType": "..."}   (raw bytes)
//   {"op": "put",  "path": "home/c.json", "json": {...}}              (s5.js stores CBOR)
//   {"op": "get",  "path": "home/a.txt"}
//   {"op": "list", "path": "home"}
// The output is a JSON list with one result per operation.
//
// Why not `S5.create()`: it waits for a P2P WebSocket peer (S5Node.ensureInitialized) and
// keeps registry entries on the P2P network and in IndexedDB, none of which a plain HTTP
// portal offers. So this script uses s5.js's own identity (seed phrase), account
// registration and FS5 directory code, and gives FS5 a small API object that speaks the
// portal's HTTP API (upload, download, registry) instead of the P2P node.

import { FS5, JSCryptoImplementation, S5UserIdentity } from "@julesl23/s5js/core";
import { portalAccountRegister } from "@julesl23/s5js/dist/src/account/register.js";
import { S5Portal } from "@julesl23/s5js/dist/src/account/portal.js";
import { BlobIdentifier } from "@julesl23/s5js/dist/src/identifier/blob.js";

const b64url = (bytes) => Buffer.from(bytes).toString("base64url");
const unb64url = (text) => new Uint8Array(Buffer.from(text, "base64url"));

/** The part of s5.js's S5APIInterface that FS5 uses, over the portal's HTTP API. */
class PortalHttpApi {
  constructor(baseUrl, authToken, crypto) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.authToken = authToken;
    this.cryptoImpl = crypto;
  }

  get crypto() {
    return this.cryptoImpl;
  }

  async ensureInitialized() {}

  async #check(res, what) {
    if (!res.ok) {
      throw new Error(`${what}: HTTP ${res.status}: ${await res.text()}`);
    }
    return res;
  }

  async uploadBlob(blob) {
    const bytes = new Uint8Array(await blob.arrayBuffer());
    const hash = new Uint8Array([0x1e, ...this.cryptoImpl.hashBlake3Sync(bytes)]);
    const form = new FormData();
    form.append("file", new Blob([bytes]), "file");
    const res = await this.#check(
      await fetch(`${this.baseUrl}/s5/upload`, {
        method: "POST",
        headers: { Authorization: `Bearer ${this.authToken}` },
        body: form,
      }),
      "upload",
    );
    const got = BlobIdentifier.decode((await res.json()).cid);
    const expected = new BlobIdentifier(hash, bytes.length);
    if (got.toHex() !== expected.toHex()) {
      throw new Error(`portal answered CID ${got.toHex()}, expected ${expected.toHex()}`);
    }
    return expected;
  }

  async downloadBlobAsBytes(hash) {
    const multihash = new Uint8Array(hash);
    multihash[0] = 0x1e;
    const cid = new BlobIdentifier(multihash, 0).toBase58();
    const res = await fetch(`${this.baseUrl}/s5/download/${cid}`);
    if (res.status === 404) {
      throw new Error(`404 not found: ${cid}`);
    }
    await this.#check(res, "download");
    const bytes = new Uint8Array(await res.arrayBuffer());
    const digest = this.cryptoImpl.hashBlake3Sync(bytes);
    if (Buffer.compare(Buffer.from(digest), Buffer.from(multihash.subarray(1))) !== 0) {
      throw new Error(`downloaded bytes do not match ${cid}`);
    }
    return bytes;
  }

  async registryGet(pk) {
    const res = await fetch(`${this.baseUrl}/s5/registry?pk=${b64url(pk)}`);
    if (res.status === 404) {
      return undefined;
    }
    await this.#check(res, "registry get");
    const body = await res.json();
    const entry = {
      pk: unb64url(body.pk),
      revision: Number(body.revision),
      data: unb64url(body.data),
      signature: unb64url(body.signature),
    };
    if (Buffer.compare(Buffer.from(entry.pk), Buffer.from(pk)) !== 0) {
      throw new Error("portal answered a registry entry for another key");
    }
    return entry;
  }

  async registrySet(entry) {
    await this.#check(
      await fetch(`${this.baseUrl}/s5/registry`, {
        method: "POST",
        headers: {
          Authorization: `Bearer ${this.authToken}`,
          "Content-Type": "application/json",
        },
        body: JSON.stringify({
          pk: b64url(entry.pk),
          revision: entry.revision,
          data: b64url(entry.data),
          signature: b64url(entry.signature),
        }),
      }),
      "registry set",
    );
  }

  registryListen() {
    throw new Error("registryListen is not offered by the portal HTTP API");
  }
  pinHash() {
    throw new Error("pinHash is not used here");
  }
  async unpinHash() {}
  streamSubscribe() {
    throw new Error("streams are not offered by the portal HTTP API");
  }
  async streamPublish() {
    throw new Error("streams are not offered by the portal HTTP API");
  }
}

function describe(value) {
  if (value === undefined) return { kind: "missing" };
  if (value instanceof Uint8Array) return { kind: "bytes", base64: Buffer.from(value).toString("base64") };
  if (typeof value === "string") return { kind: "text", text: value };
  return { kind: "json", json: value };
}

async function run(fs, op) {
  switch (op.op) {
    case "put": {
      let data;
      if (op.text !== undefined) data = op.text;
      else if (op.base64 !== undefined) data = new Uint8Array(Buffer.from(op.base64, "base64"));
      else data = op.json;
      await fs.put(op.path, data, op.mediaType ? { mediaType: op.mediaType } : undefined);
      return { ok: true };
    }
    case "get":
      return describe(await fs.get(op.path));
    case "list": {
      const entries = [];
      for await (const item of fs.list(op.path)) {
        entries.push({
          name: item.name,
          type: item.type,
          size: item.size ?? null,
          mediaType: item.mediaType ?? null,
        });
      }
      return { entries };
    }
    default:
      throw new Error(`unknown op ${JSON.stringify(op.op)}`);
  }
}

async function main() {
  const portalUrl = process.argv[2];
  const phrase = process.env.S5_SEED_PHRASE;
  if (!portalUrl || !phrase) {
    throw new Error("usage: S5_SEED_PHRASE=... node interop.mjs <portal-url> < ops.json");
  }
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const ops = JSON.parse(Buffer.concat(chunks).toString("utf8"));

  const crypto = new JSCryptoImplementation();
  const identity = await S5UserIdentity.fromSeedPhrase(phrase, crypto);
  const url = new URL(portalUrl);
  const portal = new S5Portal(url.protocol.replace(":", ""), url.host, {});
  const accountSeed = crypto.generateSecureRandomBytes(32);
  const token = await portalAccountRegister(portal, identity, accountSeed, "s5.js-interop", crypto);

  const fs = new FS5(new PortalHttpApi(portalUrl, token, crypto), identity);
  const results = [];
  for (const op of ops) results.push(await run(fs, op));
  // exit once written: idle keep-alive sockets must not hold the process open
  process.stdout.write(JSON.stringify(results), () => process.exit(0));
}

main().catch((err) => {
  process.stderr.write(`interop.mjs failed: ${err?.stack ?? err}\n`);
  process.exit(1);
});
