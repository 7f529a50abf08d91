'use strict';
// `npm test` runs this first (pretest): the packaged proto matches protos/, and there is a
// Python that can run the real sidecar the suite starts. Says once, clearly, what is missing.

const { spawnSync } = require('node:child_process');
const path = require('node:path');
const { pythonPath } = require('./support');

const sync = spawnSync(process.execPath, [path.join(__dirname, '../scripts/sync-proto.js'), '--check'],
  { stdio: 'inherit' });
if (sync.status !== 0) process.exit(1);
try {
  pythonPath();
} catch (error) {
  console.error(`npm test: ${error.message}`);
  process.exit(1);
}
