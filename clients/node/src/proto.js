'use strict';
// The contract, loaded at run time from the package's own copy of auth.proto (proto/, kept
// identical to the repository's protos/authsidecar/v1/auth.proto by scripts/sync-proto.js,
// whose --check mode CI and `npm pack` run): no generated code.

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// Override only to load another copy of the contract (AUTHSIDECAR_PROTO_ROOT=<dir holding
// authsidecar/v1/auth.proto>).
const PROTO_ROOT = process.env.AUTHSIDECAR_PROTO_ROOT || path.resolve(__dirname, '../proto');

let cached;

function authServiceConstructor() {
  if (!cached) {
    const definition = protoLoader.loadSync('authsidecar/v1/auth.proto', {
      includeDirs: [PROTO_ROOT],
      keepCase: true,
      longs: Number,
      enums: String,
      defaults: true,
      oneofs: true,
    });
    cached = grpc.loadPackageDefinition(definition).authsidecar.v1.AuthService;
  }
  return cached;
}

// google.protobuf.Struct <-> plain JSON (proto-loader hands Struct over field by field).
function fromValue(value) {
  if (!value) return null;
  switch (value.kind) {
    case 'nullValue':
      return null;
    case 'numberValue':
      return value.numberValue;
    case 'stringValue':
      return value.stringValue;
    case 'boolValue':
      return value.boolValue;
    case 'structValue':
      return fromStruct(value.structValue);
    case 'listValue':
      return (value.listValue.values || []).map(fromValue);
    default:
      return null;
  }
}

function fromStruct(struct) {
  const out = {};
  for (const [key, value] of Object.entries((struct && struct.fields) || {})) {
    out[key] = fromValue(value);
  }
  return out;
}

function toValue(value) {
  if (value === null || value === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof value === 'number') return { numberValue: value };
  if (typeof value === 'string') return { stringValue: value };
  if (typeof value === 'boolean') return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  return { structValue: toStruct(value) };
}

function toStruct(object) {
  const fields = {};
  for (const [key, value] of Object.entries(object || {})) fields[key] = toValue(value);
  return { fields };
}

module.exports = { PROTO_ROOT, authServiceConstructor, fromStruct, toStruct };
