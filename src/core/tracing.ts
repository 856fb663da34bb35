/**
 * OpenTelemetry spans around pull, push and fan-out, when the app has
 * `@opentelemetry/api` installed (it is an optional peer: without it, or
 * without a registered SDK, spans cost nothing).
 */
interface Span {
  setAttribute(key: string, value: string | number | boolean): unknown;
  recordException(error: unknown): void;
  setStatus(status: { code: number; message?: string }): unknown;
  end(): void;
}
interface Tracer {
  startActiveSpan<T>(name: string, fn: (span: Span) => T): T;
}

let tracer: Tracer | null = null;
let loading: Promise<void> | null = null;

/** Look for @opentelemetry/api once; safe to call many times. */
export function loadTracing(): Promise<void> {
  loading ??= import('@opentelemetry/api').then(
    (api) => {
      tracer = api.trace.getTracer('rhtmx-sync') as unknown as Tracer;
    },
    () => {
      tracer = null;
    },
  );
  return loading;
}

/**
 * Run `fn` inside a span named `rhtmx.<name>` (or plainly, without
 * OpenTelemetry). A promise result ends the span when it settles.
 */
function inSpan<T>(name: string, attributes: Record<string, string | number>, fn: () => T): T {
  if (!tracer) return fn();
  return tracer.startActiveSpan(`rhtmx.${name}`, (span) => {
    for (const [key, value] of Object.entries(attributes)) span.setAttribute(`rhtmx.${key}`, value);
    const fail = (error: unknown): never => {
      span.recordException(error);
      span.setStatus({ code: 2, message: (error as Error).message });
      throw error;
    };
    let result: T;
    try {
      result = fn();
    } catch (error) {
      span.end();
      return fail(error);
    }
    if (!(result instanceof Promise)) {
      span.end();
      return result;
    }
    return result.catch(fail).finally(() => span.end()) as T;
  });
}

/** An async step (pull, push) in a span. */
export const traced = <T>(name: string, attributes: Record<string, string | number>, fn: () => Promise<T>): Promise<T> =>
  inSpan(name, attributes, fn);

/** The synchronous twin of `traced`, for hot paths that must not yield (fan-out). */
export const tracedSync = <T>(name: string, attributes: Record<string, string | number>, fn: () => T): T => inSpan(name, attributes, fn);
