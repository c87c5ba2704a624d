package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/trellis-mesh/trellis/internal/clients"
	"github.com/trellis-mesh/trellis/internal/policy"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

func newPolicyValidateCommand() *cobra.Command {
	var files []string
	var consul bool
	cmd := &cobra.Command{
		Use:   "validate -f FILE | --consul",
		Short: "Check policy files offline, without a server",
		Long: `Parse and validate service policies the way the server does, without
contacting it. A file holds one or more policies (YAML documents separated by
"---" lines, or JSON); -f - reads standard input.

Every problem is printed on its own line, as
  FILE: document N (service S): FIELD: DESCRIPTION
and warnings (accepted, but noteworthy) as "warning: ...". The exit status is
1 when any problem is found.

Policies in the input are checked against each other: a destination subset
of another service must be defined in that service's policy. Such references
to a service whose policy is not in the input are not checked (a warning
says so), and neither is whether services are registered in Consul.

A feature some supported gRPC implementation (grpc-js-xds, C-core) cannot
honour is accepted with a warning naming the implementation and what its
clients get instead (see README, "gRPC implementations").

With --consul, the Consul config entries (service-router, -splitter,
-resolver, -defaults) of the Consul at CONSUL_HTTP_ADDR are read as the
server reads them, and every field the server would not send to clients is
printed as "consul: ENTRY: FIELD: REASON" (a problem); the policies given
with -f take precedence over the entries of their services, as on the
server (see README, "Consul config entries").`,
		Example: `  trellis policy validate -f examples/policies/header-canary.yaml
  trellis policy validate -f echo.yaml -f greeter.yaml
  cat policies.yaml | trellis policy validate -f -
  trellis policy validate --consul -f echo.yaml`,
		Args: cobra.NoArgs,
		// The problems are the output; usage would only hide them.
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(files) == 0 && !consul {
				return errors.New("policy validate: -f FILE or --consul is required")
			}
			return runPolicyValidate(cmd.Context(), cmd.InOrStdin(), cmd.OutOrStdout(), files, consul)
		},
	}
	cmd.Flags().StringArrayVarP(&files, "file", "f", nil, "policy file, YAML or JSON; - reads standard input; repeat for several files")
	cmd.Flags().BoolVar(&consul, "consul", false, "also check the Consul config entries of the Consul at CONSUL_HTTP_ADDR, with the policies of -f taking precedence")
	return cmd
}

// inputDocument is one policy read by policy validate.
type inputDocument struct {
	file   string
	index  int // from 1, within its file
	policy *policyv1.ServicePolicy
}

func (d inputDocument) location() string {
	return documentLocation(d.file, d.index, d.policy.GetService())
}

func documentLocation(file string, index int, service string) string {
	if service == "" {
		return fmt.Sprintf("%s: document %d", file, index)
	}
	return fmt.Sprintf("%s: document %d (service %s)", file, index, service)
}

func runPolicyValidate(ctx context.Context, stdin io.Reader, out io.Writer, files []string, consul bool) error {
	problems := 0
	report := func(format string, args ...any) {
		problems++
		fmt.Fprintf(out, format+"\n", args...)
	}
	var docs []inputDocument
	for _, file := range files {
		name, policies, err := readPolicyFile(stdin, file)
		if err != nil {
			var pe *policy.ParseError
			if !errors.As(err, &pe) {
				report("%s: %v", name, err)
				continue
			}
			for _, de := range pe.Documents {
				report("%s: %s", documentLocation(name, de.Index, de.Service), fieldDescription(de.Field, de.Description))
			}
			continue
		}
		if len(policies) == 0 {
			report("%s: no policy found: expected one or more ServicePolicy documents", name)
		}
		for i, p := range policies {
			docs = append(docs, inputDocument{file: name, index: i + 1, policy: p})
		}
	}

	byService := map[string]inputDocument{}
	for _, d := range docs {
		svc := d.policy.GetService()
		if first, dup := byService[svc]; dup && svc != "" {
			report("%s: service: also defined in %s document %d; one policy per service", d.location(), first.file, first.index)
			continue
		}
		byService[svc] = d
	}
	policyOf := func(service string) *policyv1.ServicePolicy {
		if d, ok := byService[service]; ok {
			return d.policy
		}
		return nil
	}

	for _, d := range docs {
		env := policy.Env{PolicyOf: policyOf}
		var missing []string
		for _, svc := range policy.ReferencedServices(d.policy) {
			if _, ok := byService[svc]; !ok {
				missing = append(missing, svc)
			}
		}
		if len(missing) > 0 {
			// Their policies may be stored on the server: check nothing
			// about other services rather than report false problems.
			env.PolicyOf = nil
			fmt.Fprintf(out, "warning: %s: destinations in %s not checked: their policies are not in the input\n", d.location(), strings.Join(missing, ", "))
		}
		warnings, err := policy.Validate(d.policy, env)
		for _, w := range warnings {
			fmt.Fprintf(out, "warning: %s: %s\n", d.location(), w)
		}
		for _, g := range clients.PolicyGaps(d.policy) {
			fmt.Fprintf(out, "warning: %s: %s\n", d.location(), g)
		}
		if err != nil {
			var ve *policy.ValidationError
			if !errors.As(err, &ve) {
				report("%s: %v", d.location(), err)
				continue
			}
			for _, v := range ve.Violations {
				report("%s: %s", d.location(), fieldDescription(v.Field, v.Description))
			}
		}
	}

	if consul {
		trellis := make(map[string]*policyv1.ServicePolicy, len(byService))
		for svc, d := range byService {
			trellis[svc] = policy.Normalize(d.policy)
		}
		n, err := validateConsulEntries(ctx, out, trellis)
		if err != nil {
			report("consul: %v", err)
		}
		problems += n
	}
	if problems > 0 {
		return fmt.Errorf("policy validate: %d problem(s) found", problems)
	}
	if len(docs) == 0 {
		return nil
	}
	if len(docs) == 1 {
		fmt.Fprintln(out, "1 policy valid")
	} else {
		fmt.Fprintf(out, "%d policies valid\n", len(docs))
	}
	return nil
}

func fieldDescription(field, description string) string {
	if field == "" {
		return description
	}
	return field + ": " + description
}

// readPolicyFile parses one input, "-" being standard input, and returns
// the name to print for it.
func readPolicyFile(stdin io.Reader, file string) (string, []*policyv1.ServicePolicy, error) {
	if file == "-" {
		policies, err := policy.ParseDocuments(stdin)
		return "<stdin>", policies, err
	}
	f, err := os.Open(file)
	if err != nil {
		return file, nil, err
	}
	defer f.Close()
	policies, err := policy.ParseDocuments(f)
	return file, policies, err
}
