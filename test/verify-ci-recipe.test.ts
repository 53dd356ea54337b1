import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { configDir, rawEtcd, repoRoot, runCli, serverEnv } from './support/harness.js';

/**
 * The CI recipe in examples/ must not rot: every `migrate …` command in it is
 * run, as written, by the real CLI against the test servers, and what it
 * writes is checked (JUnit on stdout, markdown in the summary file).
 */
const RECIPE = join(repoRoot, 'examples', 'github-actions', 'verify.yml');

interface Step {
  name?: string;
  run?: string;
  uses?: string;
}

/** The `run:` scripts of every step of every job, continuation lines joined. */
function runLines(recipe: { jobs: Record<string, { steps: Step[] }> }): string[] {
  return Object.values(recipe.jobs)
    .flatMap((job) => job.steps)
    .flatMap((step) => (step.run ? step.run.replace(/\\\n\s*/g, ' ').split('\n') : []))
    .map((line) => line.trim())
    .filter(Boolean);
}

/**
 * Splits one shell command line the way bash would for the constructs the
 * recipe may use: words, single and double quotes, `$VAR` / `${VAR}`, and
 * `>` / `>>` redirections of stdout. Anything else (pipes, `;`, `&&`, command
 * substitution) is refused so that the recipe stays checkable.
 */
function splitCommand(line: string, env: Record<string, string>): { args: string[]; stdout?: { file: string; append: boolean } } {
  if (/[|;&`]|\$\(/.test(line.replace(/'[^']*'/g, ''))) throw new Error(`the recipe line uses shell syntax this test does not model: ${line}`);
  const words: string[] = [];
  let stdout: { file: string; append: boolean } | undefined;
  let redirect: boolean | undefined;
  let i = 0;
  const expand = (name: string) => {
    if (!(name in env)) throw new Error(`the recipe uses $${name}, which the test does not provide`);
    return env[name]!;
  };
  while (i < line.length) {
    while (line[i] === ' ') i++;
    if (i >= line.length) break;
    if (line[i] === '>') {
      redirect = line[i + 1] === '>';
      i += redirect ? 2 : 1;
      continue;
    }
    let word = '';
    while (i < line.length && line[i] !== ' ' && line[i] !== '>') {
      const c = line[i]!;
      if (c === "'") {
        const end = line.indexOf("'", i + 1);
        word += line.slice(i + 1, end);
        i = end + 1;
      } else if (c === '"') {
        const end = line.indexOf('"', i + 1);
        word += line.slice(i + 1, end).replace(/\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?/g, (_, name: string) => expand(name));
        i = end + 1;
      } else if (c === '$') {
        const match = /^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?/.exec(line.slice(i))!;
        word += expand(match[1]!);
        i += match[0].length;
      } else {
        word += c;
        i++;
      }
    }
    if (redirect !== undefined) {
      stdout = { file: word, append: redirect };
      redirect = undefined;
    } else {
      words.push(word);
    }
  }
  return { args: words, ...(stdout ? { stdout } : {}) };
}

const etcd = rawEtcd();
afterAll(() => etcd.close());

describe('the GitHub Actions recipe (examples/github-actions/verify.yml)', () => {
  const recipe = parse(readFileSync(RECIPE, 'utf8')) as { jobs: Record<string, { env?: Record<string, string>; steps: Step[] }> };
  const lines = runLines(recipe);
  const commands = lines.filter((line) => /^migrate\s/.test(line));

  it('is a workflow with a verify command, publishing JUnit and a step summary', () => {
    expect(commands.length).toBeGreaterThan(0);
    expect(commands.some((c) => c.includes('--format junit'))).toBe(true);
    expect(commands.some((c) => c.includes('$GITHUB_STEP_SUMMARY'))).toBe(true);
    const steps = Object.values(recipe.jobs).flatMap((job) => job.steps);
    expect(steps.some((s) => s.uses?.startsWith('mikepenz/action-junit-report@'))).toBe(true);
    // It installs this package, by its published name.
    const name = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')).name as string;
    expect(lines.some((l) => l.startsWith(`npm install --global ${name}@`))).toBe(true);
  });

  it('every migrate command in it runs as written against real servers, and writes what the next steps read', async () => {
    const id = `ci-${randomBytes(3).toString('hex')}`;
    const dir = configDir(`version: 1\nid: ${id}\nrules:\n  - { name: app, from: /${id}/app/, to: ${id}/app/ }\n`);
    for (let i = 0; i < 5; i++) await etcd.put(`/${id}/app/k${i}`).value(`v${i}`);
    const copy = await runCli(['copy'], { cwd: dir, env: serverEnv() });
    expect(copy.code, copy.stderr).toBe(0);

    const work = mkdtempSync(join(tmpdir(), 'migrate-ci-'));
    const summary = join(work, 'step-summary.md');
    writeFileSync(summary, '');
    const jobEnv = Object.values(recipe.jobs)[0]!.env ?? {};
    expect(Object.keys(jobEnv)).toContain('MIGRATE_CONFIG');
    // The job's own environment, with the servers of this test in place of the repository's variables and secrets.
    const env = serverEnv({ MIGRATE_CONFIG: join(dir, jobEnv.MIGRATE_CONFIG!), GITHUB_STEP_SUMMARY: summary });
    for (const line of commands) {
      const { args, stdout } = splitCommand(line, env);
      const run = await runCli(args.slice(1), { cwd: work, env });
      expect(run.code, `${line}\n${run.stderr}`).toBe(0);
      if (stdout) writeFileSync(join(work, stdout.file), run.stdout, { flag: stdout.append ? 'a' : 'w' });
    }
    const xml = readFileSync(join(work, 'verify.xml'), 'utf8');
    expect(XMLValidator.validate(xml)).toBe(true);
    const report = new XMLParser({ ignoreAttributes: false, isArray: (n) => n === 'testcase' }).parse(xml);
    expect(report.testsuites.testsuite.testcase.map((t: { '@_name': string }) => t['@_name'])).toEqual(['app']);
    expect(report.testsuites['@_failures']).toBe('0');
    expect(readFileSync(summary, 'utf8')).toContain('## migrate verify: ✅ parity');
  });

  it('the line splitter refuses shell it does not model', () => {
    expect(() => splitCommand('migrate verify | tee x', {})).toThrow(/shell syntax/);
    expect(splitCommand(`migrate verify --x "$A" 'b c' >> out`, { A: 'a' })).toEqual({ args: ['migrate', 'verify', '--x', 'a', 'b c'], stdout: { file: 'out', append: true } });
  });
});

const GITLAB_RECIPE = join(repoRoot, 'examples', 'gitlab-ci', 'verify.yml');

interface GitLabJob {
  variables?: Record<string, string>;
  before_script?: string[];
  script: string[];
  after_script?: string[];
  artifacts?: { when?: string; paths?: string[]; reports?: { junit?: string } };
}

describe('the GitLab CI recipe (examples/gitlab-ci/verify.yml)', () => {
  const recipe = parse(readFileSync(GITLAB_RECIPE, 'utf8')) as Record<string, unknown>;
  // Jobs are the top-level entries with a script (the others are keywords such as stages or variables).
  const jobs = Object.values(recipe).filter((v): v is GitLabJob => typeof v === 'object' && v !== null && 'script' in v);
  const lines = jobs
    .flatMap((job) => [...(job.before_script ?? []), ...job.script, ...(job.after_script ?? [])])
    .flatMap((script) => script.replace(/\\\n\s*/g, ' ').split('\n'))
    .map((line) => line.trim())
    .filter(Boolean);
  const commands = lines.filter((line) => /^migrate\s/.test(line));

  it('is one job with a verify command whose JUnit report GitLab reads, kept even when the job fails', () => {
    expect(jobs).toHaveLength(1);
    const [job] = jobs;
    expect(commands.some((c) => c.includes('--format junit'))).toBe(true);
    expect(job!.artifacts).toMatchObject({ when: 'always', reports: { junit: 'verify.xml' } });
    expect(job!.artifacts!.paths).toEqual(expect.arrayContaining(['verify.xml', 'verify.md']));
    const name = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')).name as string;
    expect(lines.some((l) => l.startsWith(`npm install --global ${name}@`))).toBe(true);
    // Only documented commands: the verify command of the GitHub recipe, with the summary in a file.
    const github = runLines(parse(readFileSync(RECIPE, 'utf8'))).filter((line) => /^migrate\s/.test(line));
    expect(commands.map((c) => c.replace(/--summary-file \S+/, ''))).toEqual(github.map((c) => c.replace(/--summary-file \S+/, '')));
  });

  it('every migrate command in it runs as written against real servers, and writes the artifacts it keeps', async () => {
    const id = `gl-${randomBytes(3).toString('hex')}`;
    const dir = configDir(`version: 1\nid: ${id}\nrules:\n  - { name: app, from: /${id}/app/, to: ${id}/app/ }\n`);
    for (let i = 0; i < 5; i++) await etcd.put(`/${id}/app/k${i}`).value(`v${i}`);
    const copy = await runCli(['copy'], { cwd: dir, env: serverEnv() });
    expect(copy.code, copy.stderr).toBe(0);

    const work = mkdtempSync(join(tmpdir(), 'migrate-gitlab-'));
    const variables = jobs[0]!.variables ?? {};
    expect(Object.keys(variables)).toContain('MIGRATE_CONFIG');
    const env = serverEnv({ MIGRATE_CONFIG: join(dir, variables.MIGRATE_CONFIG!) });
    for (const line of commands) {
      const { args, stdout } = splitCommand(line, env);
      const run = await runCli(args.slice(1), { cwd: work, env });
      expect(run.code, `${line}\n${run.stderr}`).toBe(0);
      if (stdout) writeFileSync(join(work, stdout.file), run.stdout, { flag: stdout.append ? 'a' : 'w' });
    }
    const xml = readFileSync(join(work, 'verify.xml'), 'utf8');
    expect(XMLValidator.validate(xml)).toBe(true);
    const report = new XMLParser({ ignoreAttributes: false, isArray: (n) => n === 'testcase' }).parse(xml);
    expect(report.testsuites.testsuite.testcase.map((t: { '@_name': string }) => t['@_name'])).toEqual(['app']);
    expect(readFileSync(join(work, 'verify.md'), 'utf8')).toContain('## migrate verify: ✅ parity');
  });
});
