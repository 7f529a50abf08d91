// Types of the ES module entry: the same declarations as the CommonJS one.
export * from './index.js';
import * as cjs from './index.js';
export default cjs;
