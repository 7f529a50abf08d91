#!/usr/bin/env node
'use strict';
// The package ships its own copy of the contract (proto/authsidecar/v1/auth.proto), so an
// installed package needs nothing from the repository. That copy must never drift from the
// repository's protos/authsidecar/v1/auth.proto. `python scripts/gen_protos.py` (the one
// command to run after editing the proto) copies it too, and its --check compares it.
//   node scripts/sync-proto.js          copy the repository's proto into the package
//   node scripts/sync-proto.js --check  exit 1 when the copy differs (CI, pytest, `npm pack`)
// Outside the repository (an unpacked tarball) there is nothing to compare with: --check says
// so and exits 0.

const fs = require('node:fs');
const path = require('node:path');

const RELATIVE = 'authsidecar/v1/auth.proto';
const SOURCE = path.resolve(__dirname, '../../../protos', RELATIVE);
const COPY = path.resolve(__dirname, '../proto', RELATIVE);

function main(args) {
  if (!fs.existsSync(SOURCE)) {
    console.log(`sync-proto: ${SOURCE} not found (not in the repository); nothing to check`);
    return 0;
  }
  const source = fs.readFileSync(SOURCE);
  if (args.includes('--check')) {
    if (fs.existsSync(COPY) && fs.readFileSync(COPY).equals(source)) return 0;
    console.error(`sync-proto: ${path.relative(process.cwd(), COPY)} differs from `
      + `protos/${RELATIVE}; run: node clients/node/scripts/sync-proto.js`);
    return 1;
  }
  fs.mkdirSync(path.dirname(COPY), { recursive: true });
  fs.writeFileSync(COPY, source);
  return 0;
}

process.exitCode = main(process.argv.slice(2));
