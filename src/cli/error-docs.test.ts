/**
 * Every error code the tool can raise has its own section in the README's
 * "Troubleshooting" (issue 10), and every printed error points there. A new
 * code without docs, or docs for a code that no longer exists, fails here.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { errorDocs, RefusedError } from '../errors.js';
import { renderVerifyError } from '../verify/render.js';
import { main } from './main.js';
import { captureIo } from '../../test/support/capture-io.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const readme = readFileSync(join(root, 'README.md'), 'utf8');

/**
 * The codes in the source: the first argument of every typed error built with a
 * literal code (`new ServerError('etcd_unreachable', …)`, `new ConsulResponseError(…)`,
 * `new PhaseDocumentError(…)`) and of every `super('code', …)` of an error class,
 * plus `internal_error`, which the CLI entry reports for bugs.
 */
export function sourceErrorCodes(dir = join(root, 'src')): Map<string, string[]> {
  const codes = new Map<string, string[]>([['internal_error', ['src/cli/main.ts']]]);
  const visit = (path: string) => {
    for (const name of readdirSync(path)) {
      const file = join(path, name);
      if (statSync(file).isDirectory()) visit(file);
      else if (file.endsWith('.ts') && !file.endsWith('.test.ts') && !file.endsWith('.d.ts')) {
        const text = readFileSync(file, 'utf8');
        for (const m of text.matchAll(/(?:new\s+(?!(?:Error|TypeError|RangeError|SyntaxError)\()[A-Z]\w*Error\(|super\()\s*'([a-z][a-z0-9_]*)'/g)) {
          codes.set(m[1]!, [...(codes.get(m[1]!) ?? []), file.slice(root.length + 1)]);
        }
      }
    }
  };
  visit(dir);
  return codes;
}

function troubleshooting(): string {
  const start = readme.indexOf('\n## Troubleshooting');
  expect(start, 'README.md has a "## Troubleshooting" section').toBeGreaterThan(0);
  const end = readme.indexOf('\n## ', start + 1);
  return readme.slice(start, end < 0 ? undefined : end);
}

const io = captureIo;

describe('error codes and their docs', () => {
  const codes = sourceErrorCodes();

  it('finds the codes (the scan still matches how errors are built)', () => {
    for (const code of ['config_not_found', 'config_invalid', 'consul_unreachable', 'etcd_unreachable', 'consul_txn_check_failed', 'etcd_compacted', 'value_too_large', 'interrupted', 'client_phase_newer']) expect([...codes.keys()]).toContain(code);
    expect(codes.size).toBeGreaterThan(50);
  });

  it('every code in the source has a section with an explicit anchor under "Troubleshooting"', () => {
    const section = troubleshooting();
    const missing = [...codes].filter(([code]) => !section.includes(`<a id="error-${code}"></a>`)).map(([code, files]) => `${code} (${files.join(', ')})`);
    expect(missing, 'add a sub-section with <a id="error-<code>"></a> to README.md "Troubleshooting"').toEqual([]);
  });

  it('every documented code still exists in the source', () => {
    const documented = [...troubleshooting().matchAll(/<a id="error-([a-z0-9_]+)"><\/a>/g)].map((m) => m[1]!);
    expect(documented.filter((code) => !codes.has(code))).toEqual([]);
    expect(new Set(documented).size, 'each code documented once').toBe(documented.length);
  });

  it('a printed error links to its section, on stderr and in the JSON document', async () => {
    const t = io({ MIGRATE_CONFIG: '/nonexistent/migration.yaml' });
    expect(await main(['plan'], t)).toBe(2);
    expect(t.err).toContain('error[config_not_found]');
    expect(t.err).toContain(`  see: ${errorDocs('config_not_found')}\n`);
    expect(errorDocs('config_not_found')).toBe('README.md#error-config_not_found');

    const j = io({ MIGRATE_CONFIG: '/nonexistent/migration.yaml' });
    expect(await main(['plan', '--format', 'json'], j)).toBe(2);
    expect(JSON.parse(j.out)).toMatchObject({ status: 'error', error: { code: 'config_not_found', docs: 'README.md#error-config_not_found' } });
  });

  it("verify's JUnit and markdown error artifacts link the section too", () => {
    const err = new RefusedError('verify_cut_timeout', 'no consistent cut', { hint: 'raise --wait-timeout' });
    expect(renderVerifyError(err, 'junit', 'demo')).toContain('see: README.md#error-verify_cut_timeout');
    expect(renderVerifyError(err, 'markdown', 'demo')).toContain('README.md#error-verify_cut_timeout');
  });
});
