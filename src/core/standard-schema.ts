/**
 * The Standard Schema interface (https://standardschema.dev), declared here
 * as the spec recommends so no dependency is needed: zod, valibot, arktype
 * and others implement it.
 */
export interface StandardSchemaV1<Input = unknown, Output = Input> {
  readonly '~standard': {
    readonly version: 1;
    readonly vendor: string;
    readonly validate: (value: unknown) => StandardResult<Output> | Promise<StandardResult<Output>>;
    readonly types?: { readonly input: Input; readonly output: Output } | undefined;
  };
}

export type StandardResult<Output> =
  | { readonly value: Output; readonly issues?: undefined }
  | { readonly issues: ReadonlyArray<StandardIssue> };

export interface StandardIssue {
  readonly message: string;
  readonly path?: ReadonlyArray<PropertyKey | { readonly key: PropertyKey }> | undefined;
}

/** An issue as it travels to clients: the message and a dotted path. */
export interface SchemaIssue {
  message: string;
  path?: string;
}

export function toSchemaIssues(issues: ReadonlyArray<StandardIssue>): SchemaIssue[] {
  return issues.map((issue) => {
    const path = issue.path?.map((segment) => String(typeof segment === 'object' ? segment.key : segment)).join('.');
    return path ? { message: issue.message, path } : { message: issue.message };
  });
}
