/** A child process that answers one JSON line per JSON line it is sent. */
import { spawn, type ChildProcess } from 'node:child_process';

export class LineProcess {
  private buf = '';
  private waiting: { resolve: (v: unknown) => void; reject: (e: Error) => void }[] = [];
  private exited: Error | null = null;
  readonly child: ChildProcess;

  constructor(
    cmd: string,
    args: string[],
    opts: { cwd: string; env?: NodeJS.ProcessEnv; log: (line: string) => void },
  ) {
    this.child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stdout!.setEncoding('utf8');
    this.child.stdout!.on('data', (d: string) => {
      this.buf += d;
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i).trim();
        this.buf = this.buf.slice(i + 1);
        if (!line) continue;
        const w = this.waiting.shift();
        if (!w) continue;
        try {
          w.resolve(JSON.parse(line));
        } catch {
          w.reject(new Error(`${cmd}: not JSON: ${line.slice(0, 200)}`));
        }
      }
    });
    let partial = '';
    this.child.stderr!.setEncoding('utf8');
    this.child.stderr!.on('data', (d: string) => {
      partial += d;
      const lines = partial.split('\n');
      partial = lines.pop()!;
      for (const l of lines) if (l.trim()) opts.log(l.trim());
    });
    const fail = (e: Error) => {
      this.exited = e;
      for (const w of this.waiting.splice(0)) w.reject(e);
    };
    this.child.on('error', (e) => fail(e));
    this.child.on('exit', (code, signal) => fail(new Error(`${cmd} exited (code ${code}, signal ${signal})`)));
  }

  /** the next line the process prints (e.g. its ready line) */
  next<T>(): Promise<T> {
    if (this.exited) return Promise.reject(this.exited);
    return new Promise<T>((resolve, reject) => this.waiting.push({ resolve: resolve as (v: unknown) => void, reject }));
  }

  request<T>(req: object): Promise<T> {
    const p = this.next<T>();
    if (!this.exited) this.child.stdin!.write(`${JSON.stringify(req)}\n`);
    return p;
  }

  async close(quit: object = { cmd: 'quit' }): Promise<void> {
    if (this.exited) return;
    const done = new Promise((r) => this.child.once('exit', r));
    this.child.stdin!.write(`${JSON.stringify(quit)}\n`);
    this.child.stdin!.end();
    const timer = setTimeout(() => this.child.kill('SIGTERM'), 10_000);
    await done;
    clearTimeout(timer);
  }
}
