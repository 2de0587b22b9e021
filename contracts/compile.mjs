// Compiles contracts/src/*.sol with solc-js (pinned in package.json, offline) and writes
// contracts/build/<Name>.json = {contractName, abi, bytecode, compiler}.
//   node compile.mjs              write the artifacts into build/
//   node compile.mjs --out DIR    write them into DIR instead (tests compare DIR with build/)
import { readFileSync, readdirSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const here = dirname(fileURLToPath(import.meta.url));
const srcDir = join(here, "src");
const outFlag = process.argv.indexOf("--out");
const outDir = outFlag >= 0 ? process.argv[outFlag + 1] : join(here, "build");
if (!outDir) {
  console.error("usage: node compile.mjs [--out DIR]");
  process.exit(2);
}

const settings = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
  viaIR: true,
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
};
const files = readdirSync(srcDir).filter((f) => f.endsWith(".sol")).sort();
const sources = Object.fromEntries(
  files.map((f) => [f, { content: readFileSync(join(srcDir, f), "utf8") }]),
);
const output = JSON.parse(
  solc.compile(JSON.stringify({ language: "Solidity", sources, settings })),
);
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const e of output.errors || []) console.error(e.formattedMessage);
if (errors.length) process.exit(1);

mkdirSync(outDir, { recursive: true });
const version = solc.version();
for (const file of files) {
  for (const [name, contract] of Object.entries(output.contracts[file] || {})) {
    const bytecode = contract.evm.bytecode.object;
    if (!bytecode) continue; // interfaces
    const artifact = {
      contractName: name,
      sourceName: `src/${file}`,
      compiler: { name: "solc-js", version, settings: { ...settings, outputSelection: undefined } },
      abi: contract.abi,
      bytecode: "0x" + bytecode,
    };
    writeFileSync(join(outDir, `${name}.json`), JSON.stringify(artifact, null, 2) + "\n");
  }
}
console.log(`compiled ${files.length} sources with solc ${version} into ${outDir}`);
