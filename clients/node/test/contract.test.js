'use strict';
// The package's tables against the contract it ships (no sidecar needed).

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { test } = require('node:test');
const { REASON_CODES } = require('../src');
const { PROTO_ROOT } = require('../src/proto');

test('REASON_CODES gives every ErrorReason the status auth.proto brackets for it', () => {
  const proto = fs.readFileSync(path.join(PROTO_ROOT, 'authsidecar/v1/auth.proto'), 'utf8');
  const body = proto.slice(proto.indexOf('enum ErrorReason {'));
  const fromProto = {};
  for (const [, status, name] of body.slice(0, body.indexOf('\n}')).matchAll(
    /\/\/ \[([A-Z_]+)\][^]*?\n\s+([A-Z_]+) = \d+;/g,
  )) fromProto[name] = status;
  assert.ok(Object.keys(fromProto).length >= 21);
  assert.deepEqual({ ...REASON_CODES }, fromProto);
});

test('the package loads its own copy of the contract', () => {
  assert.equal(PROTO_ROOT, path.resolve(__dirname, '../proto'));
});
