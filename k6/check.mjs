#!/usr/bin/env node
// CI check of the k6 scripts, without k6 and without npm packages:
//
//   node k6/check.mjs <openapi.json> [dir-or-file ...]
//
// (a) `node --check` parses every .js/.mjs file (as ES modules: see
//     package.json),
// (b) every route('METHOD', '/path/{param}') call names an operation of the
//     OpenAPI document, and every unlisted() call one of the few documents
//     the server serves outside it,
// (c) no string literal holding an API path appears anywhere else, so no
//     URL escapes (b),
// (d) at least one route was found.
// Scans this file's directory unless paths are given. Exits 1 on any problem.
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

// Served by the server but not part of its OpenAPI paths.
const UNLISTED = new Set(['GET /openapi.json', 'GET /docs', 'GET /metrics']);
// Text that marks a string literal as a server path.
const GUARDED = ['/api/', '/health', '/openapi.json', '/docs', '/metrics'];
const METHODS = new Set(['GET', 'PUT', 'POST', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS']);

// route('GET', '/api/v1/users/{id}') or unlisted('GET', '/openapi.json'):
// both arguments plain string literals. `d` gives the path's position.
const CALL = /\b(route|unlisted)\(\s*(['"`])([A-Za-z]+)\2\s*,\s*(['"`])([^'"`\\$]*)\4/dg;

// --- a small JavaScript tokenizer --------------------------------------------
// Enough of the grammar to tell strings, template text, comments and regular
// expression literals apart, which is all (b) and (c) need.

const REGEX_AFTER_WORD = new Set([
  'return', 'typeof', 'instanceof', 'in', 'of', 'new', 'delete', 'void', 'throw',
  'case', 'do', 'else', 'yield', 'await',
]);
const REGEX_AFTER_PUNCT = new Set('(,=:[!&|?{};+-*%<>~^'.split(''));

function tokenize(src) {
  const tokens = []; // { type: 'word'|'punct'|'string'|'template'|'regex'|'number', text, start, end }
  const comments = []; // [start, end)
  let i = 0;

  const regexAllowed = () => {
    const prev = tokens[tokens.length - 1];
    if (!prev) return true;
    if (prev.type === 'word') return REGEX_AFTER_WORD.has(prev.text);
    if (prev.type === 'punct') return REGEX_AFTER_PUNCT.has(prev.text);
    return false;
  };

  const quoted = (quote) => {
    const start = i++;
    while (i < src.length && src[i] !== quote) {
      if (src[i] === '\\') i++;
      else if (src[i] === '\n') throw new Error(`unterminated string at offset ${start}`);
      i++;
    }
    if (i >= src.length) throw new Error(`unterminated string at offset ${start}`);
    i++;
    tokens.push({ type: 'string', text: src.slice(start + 1, i - 1), start, end: i });
  };

  // A template literal: its text chunks become tokens, and the code inside
  // ${...} is tokenized like any other code.
  const template = () => {
    let chunk = i++;
    for (;;) {
      if (i >= src.length) throw new Error(`unterminated template at offset ${chunk}`);
      const c = src[i];
      if (c === '\\') { i += 2; continue; }
      if (c === '`') {
        i++;
        tokens.push({ type: 'template', text: src.slice(chunk + 1, i - 1), start: chunk, end: i });
        return;
      }
      if (c === '$' && src[i + 1] === '{') {
        tokens.push({ type: 'template', text: src.slice(chunk + 1, i), start: chunk, end: i });
        i += 2;
        code('}');
        chunk = i - 1; // the closing brace opens the next chunk
        continue;
      }
      i++;
    }
  };

  const regex = () => {
    const start = i++;
    let inClass = false;
    while (i < src.length) {
      const c = src[i];
      if (c === '\\') { i += 2; continue; }
      if (c === '\n') throw new Error(`unterminated regular expression at offset ${start}`);
      if (c === '[') inClass = true;
      else if (c === ']') inClass = false;
      else if (c === '/' && !inClass) break;
      i++;
    }
    i++;
    while (i < src.length && /[a-z]/i.test(src[i])) i++;
    tokens.push({ type: 'regex', text: src.slice(start, i), start, end: i });
  };

  // Code up to the `until` character at brace depth 0 (or the end).
  function code(until) {
    let depth = 0;
    while (i < src.length) {
      const c = src[i];
      if (/\s/.test(c)) { i++; continue; }
      if (c === '/' && src[i + 1] === '/') {
        const start = i;
        while (i < src.length && src[i] !== '\n') i++;
        comments.push([start, i]);
        continue;
      }
      if (c === '/' && src[i + 1] === '*') {
        const start = i;
        const end = src.indexOf('*/', i + 2);
        if (end < 0) throw new Error(`unterminated comment at offset ${start}`);
        i = end + 2;
        comments.push([start, i]);
        continue;
      }
      if (c === '\'' || c === '"') { quoted(c); continue; }
      if (c === '`') { template(); continue; }
      if (c === '/' && regexAllowed()) { regex(); continue; }
      if (/[A-Za-z_$]/.test(c)) {
        const start = i;
        while (i < src.length && /[\w$]/.test(src[i])) i++;
        tokens.push({ type: 'word', text: src.slice(start, i), start, end: i });
        continue;
      }
      if (/[0-9]/.test(c)) {
        const start = i;
        while (i < src.length && /[\w.]/.test(src[i])) i++;
        tokens.push({ type: 'number', text: src.slice(start, i), start, end: i });
        continue;
      }
      if (c === '{') depth++;
      if (c === '}') {
        if (depth === 0 && until === '}') { i++; return; }
        depth--;
      }
      tokens.push({ type: 'punct', text: c, start: i, end: i + 1 });
      i++;
    }
    if (until) throw new Error('unterminated ${...} in a template literal');
  }

  code(null);
  return { tokens, comments };
}

// The source with comments blanked out (offsets unchanged).
function withoutComments(src, comments) {
  let out = src;
  for (const [start, end] of comments) {
    out = out.slice(0, start) + src.slice(start, end).replace(/[^\n]/g, ' ') + out.slice(end);
  }
  return out;
}

// --- the checks --------------------------------------------------------------

// `import x from '...'`, `import '...'`, `export ... from '...'`, `import('...')`.
function isModuleSpecifier(tokens, k) {
  const prev = tokens[k - 1];
  if (!prev) return false;
  if (prev.type === 'word' && (prev.text === 'from' || prev.text === 'import')) return true;
  const before = tokens[k - 2];
  return prev.text === '(' && before !== undefined && before.text === 'import';
}

function lineOf(src, offset) {
  return src.slice(0, offset).split('\n').length;
}

function listFiles(target, out = []) {
  const st = statSync(target);
  if (st.isFile()) {
    if (/\.m?js$/.test(target)) out.push(target);
    return out;
  }
  for (const name of readdirSync(target).sort()) {
    if (name === 'node_modules' || name.startsWith('.')) continue;
    listFiles(join(target, name), out);
  }
  return out;
}

function main(argv) {
  const [specPath, ...targets] = argv;
  if (!specPath) {
    console.error('usage: node k6/check.mjs <openapi.json> [dir-or-file ...]');
    return 2;
  }
  const spec = JSON.parse(readFileSync(specPath, 'utf8'));
  if (!spec || !spec.paths || typeof spec.paths !== 'object') {
    console.error(`${specPath}: no "paths": not an OpenAPI document`);
    return 2;
  }

  const here = dirname(fileURLToPath(import.meta.url));
  const roots = targets.length ? targets.map((t) => resolve(t)) : [here];
  const files = roots.flatMap((root) => listFiles(root));
  const base = targets.length ? process.cwd() : resolve(here, '..');
  const show = (file) => relative(base, file) || file;

  const problems = [];
  const used = new Map(); // 'GET /path' -> Set of files
  let calls = 0;

  for (const file of files) {
    // (a) syntax, by node itself.
    const run = spawnSync(process.execPath, ['--check', file], { encoding: 'utf8' });
    if (run.status !== 0) {
      problems.push(`${show(file)}: node --check failed:\n${(run.stderr || run.stdout).replace(/\n\s*\n/g, '\n').trim()}`);
      continue;
    }
    // The checker itself is plain Node, not a k6 script.
    if (!file.endsWith('.js')) continue;

    const src = readFileSync(file, 'utf8');
    let lexed;
    try {
      lexed = tokenize(src);
    } catch (e) {
      problems.push(`${show(file)}: cannot tokenize: ${e.message}`);
      continue;
    }
    const { tokens, comments } = lexed;
    const code = withoutComments(src, comments);
    const startsWord = new Map(tokens.filter((t) => t.type === 'word').map((t) => [t.start, t]));
    const allowed = new Set(); // offsets of path literals inside checked calls
    const matched = new Set(); // offsets of route/unlisted words whose call matched

    // (b) every literal route()/unlisted() call against the spec.
    for (const m of code.matchAll(CALL)) {
      if (!startsWord.has(m.index)) continue; // inside a string, not code
      const [, fn, , method, , path] = m;
      const where = `${show(file)}:${lineOf(src, m.index)}`;
      const op = `${method.toUpperCase()} ${path}`;
      matched.add(m.index);
      allowed.add(m.indices[5][0] - 1);
      calls++;
      if (method !== method.toUpperCase() || !METHODS.has(method)) {
        problems.push(`${where}: ${fn}('${method}', ...): method must be an upper-case HTTP method`);
      } else if (fn === 'route') {
        const item = spec.paths[path];
        if (!item) problems.push(`${where}: route ${op}: no such path in the OpenAPI document`);
        else if (!item[method.toLowerCase()]) problems.push(`${where}: route ${op}: the path has no ${method} operation`);
      } else if (!UNLISTED.has(op)) {
        problems.push(`${where}: unlisted ${op}: not one of ${[...UNLISTED].join(', ')}`);
      }
      if (!used.has(op)) used.set(op, new Set());
      used.get(op).add(show(file));
    }

    // Calls the regex could not read (variables, concatenation) escape (b).
    tokens.forEach((t, k) => {
      if (t.type !== 'word' || (t.text !== 'route' && t.text !== 'unlisted')) return;
      const next = tokens[k + 1];
      const prev = tokens[k - 1];
      if (!next || next.text !== '(') return;
      if (prev && prev.text === 'function') return; // the definition
      if (!matched.has(t.start)) {
        problems.push(`${show(file)}:${lineOf(src, t.start)}: ${t.text}() must take two string literals, `
          + `e.g. ${t.text}('GET', '/path/{id}'), so this check can read it`);
      }
    });

    // (c) server paths only as the path argument of a checked call.
    tokens.forEach((t, k) => {
      if (t.type !== 'string' && t.type !== 'template') return;
      if (!GUARDED.some((g) => t.text.includes(g))) return;
      if (allowed.has(t.start)) return;
      if (isModuleSpecifier(tokens, k)) return; // import ... from 'k6/metrics'
      problems.push(`${show(file)}:${lineOf(src, t.start)}: a server path outside route()/unlisted(): `
        + `${JSON.stringify(t.text)}`);
    });
  }

  // (d) an empty result is a broken checker or a broken tree, not a pass.
  const routes = [...used.keys()].filter((op) => !UNLISTED.has(op));
  if (routes.length === 0) problems.push('no route() calls found: nothing was checked');

  const specOps = [];
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const method of Object.keys(item)) {
      if (METHODS.has(method.toUpperCase())) specOps.push(`${method.toUpperCase()} ${path}`);
    }
  }
  const unused = specOps.filter((op) => !used.has(op));

  const unlistedOps = [...used.keys()].filter((op) => UNLISTED.has(op));
  console.log(`files parsed: ${files.length} (${files.map(show).join(', ')})`);
  console.log(`calls checked: ${calls} (${routes.length} distinct route() operations, `
    + `the spec has ${specOps.length}; ${unlistedOps.length} unlisted() document(s))`);
  for (const op of [...used.keys()].sort()) {
    const tag = UNLISTED.has(op) ? ' (outside the spec)' : '';
    console.log(`  ${op.padEnd(42)}${tag} ${[...used.get(op)].sort().join(', ')}`);
  }
  if (unused.length) console.log(`spec operations no script calls: ${unused.join(', ')}`);

  if (problems.length) {
    console.error(`\n${problems.length} problem(s):`);
    for (const p of problems) console.error(`  - ${p}`);
    return 1;
  }
  console.log('ok');
  return 0;
}

process.exitCode = main(process.argv.slice(2));
