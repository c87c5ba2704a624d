package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// Settings of a command come, for each flag, from the first of:
//
//  1. the command line (--xds-listen ...);
//  2. the environment, TRELLIS_<FLAG NAME IN UPPER SNAKE CASE>
//     (TRELLIS_XDS_LISTEN for --xds-listen);
//  3. the YAML file named by --config (or TRELLIS_CONFIG), whose keys are
//     flag names (xds-listen: 127.0.0.1:18000);
//  4. the flag's default.
//
// The layer works on the command's pflag.FlagSet, so every flag a command
// defines is covered without being listed here.

const (
	// configFlag names the flag (and, through envName, the variable) that
	// holds the path of the configuration file.
	configFlag = "config"
	// printConfigFlag prints the effective settings instead of running.
	printConfigFlag = "print-config"
	// envPrefix starts the name of every setting's environment variable.
	envPrefix = "TRELLIS_"
)

// settingsHelp is appended to the long help of every command the layer is
// installed on.
const settingsHelp = `

Every flag can also be set from the environment or from a YAML file, with
this precedence: command-line flags, then environment, then the file, then
the flag's default.
  - environment: TRELLIS_ and the flag name in upper case with dashes as
    underscores: --xds-listen is TRELLIS_XDS_LISTEN. Lists are
    comma-separated (TRELLIS_ZONE_META_KEY=zone,az).
  - file: --config FILE (or TRELLIS_CONFIG=FILE), a YAML mapping whose keys
    are the flag names (xds-listen: 127.0.0.1:18000); lists are YAML
    sequences or comma-separated strings. Unknown keys are errors.
--print-config prints the effective settings, as such a file (tokens\nredacted), and exits.`

// lookupEnvFunc is os.LookupEnv, injectable for tests.
type lookupEnvFunc func(key string) (string, bool)

// withSettings installs the settings layer on cmd: it adds --config and
// --print-config, applies environment and file to the flags not given on
// the command line before cmd runs (chaining cmd's own PreRunE), and
// documents the mapping and every flag's default in cmd's help. It returns
// cmd.
func withSettings(cmd *cobra.Command, lookupEnv lookupEnvFunc) *cobra.Command {
	f := cmd.Flags()
	f.String(configFlag, "", "YAML file of settings whose keys are the flag names")
	f.Bool(printConfigFlag, false, "print the effective settings as a YAML config file and exit")
	cmd.Long += settingsHelp

	preRunE, preRun := cmd.PreRunE, cmd.PreRun
	cmd.PreRun = nil
	cmd.PreRunE = func(c *cobra.Command, args []string) error {
		if err := applySettings(c.Flags(), lookupEnv); err != nil {
			return err
		}
		if preRunE != nil {
			return preRunE(c, args)
		}
		if preRun != nil {
			preRun(c, args)
		}
		return nil
	}
	runE, run := cmd.RunE, cmd.Run
	cmd.Run = nil
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if print, _ := c.Flags().GetBool(printConfigFlag); print {
			return printSettings(c.OutOrStdout(), c.Flags())
		}
		if runE != nil {
			return runE(c, args)
		}
		run(c, args)
		return nil
	}

	help := cmd.HelpFunc()
	cmd.SetHelpFunc(func(c *cobra.Command, args []string) {
		if c == cmd {
			documentFlags(c.Flags())
		}
		help(c, args)
	})
	return cmd
}

// envName is the environment variable of a flag: TRELLIS_XDS_LISTEN for
// xds-listen.
func envName(flag string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// settable tells whether a flag is a setting that environment and file
// may carry: not --help, --config itself or --print-config.
func settable(name string) bool {
	return name != "help" && name != configFlag && name != printConfigFlag
}

// applySettings fills every flag of fs that was not set on the command line
// from the environment, else from the config file.
func applySettings(fs *pflag.FlagSet, lookupEnv lookupEnvFunc) error {
	onCommandLine := map[string]bool{}
	fs.Visit(func(fl *pflag.Flag) { onCommandLine[fl.Name] = true })

	path, _ := fs.GetString(configFlag)
	if !onCommandLine[configFlag] {
		if v, ok := lookupEnv(envName(configFlag)); ok {
			path = v
		}
	}
	var file map[string]fileValue
	if path != "" {
		var err error
		if file, err = readSettingsFile(path, fs); err != nil {
			return err
		}
	}

	var errs []error
	fs.VisitAll(func(fl *pflag.Flag) {
		if !settable(fl.Name) || onCommandLine[fl.Name] {
			return
		}
		if v, ok := lookupEnv(envName(fl.Name)); ok {
			if err := setScalar(fs, fl, v); err != nil {
				errs = append(errs, fmt.Errorf("environment %s=%q: %s", envName(fl.Name), v, accepted(fl, err)))
			}
			return
		}
		fv, ok := file[fl.Name]
		if !ok {
			return
		}
		if err := fv.set(fs, fl); err != nil {
			errs = append(errs, fmt.Errorf("config file %s:%d: key %q: %s", path, fv.line, fl.Name, accepted(fl, err)))
		}
	})
	return errors.Join(errs...)
}

// fileValue is one key's value in the config file: a scalar or, for list
// flags, a sequence.
type fileValue struct {
	line   int
	scalar *string
	list   []string
}

func (v fileValue) set(fs *pflag.FlagSet, fl *pflag.Flag) error {
	if v.scalar != nil {
		return setScalar(fs, fl, *v.scalar)
	}
	sv, ok := fl.Value.(pflag.SliceValue)
	if !ok {
		return errors.New("a list was given but the setting takes a single value")
	}
	if err := sv.Replace(v.list); err != nil {
		return err
	}
	fl.Changed = true
	return nil
}

// setScalar sets a flag from one string, as its command-line form would,
// except that a repeatable flag (stringArray, which takes one item per
// occurrence on the command line) takes a comma-separated list.
func setScalar(fs *pflag.FlagSet, fl *pflag.Flag, s string) error {
	sv, ok := fl.Value.(pflag.SliceValue)
	if !ok || !strings.HasSuffix(fl.Value.Type(), "Array") {
		return fs.Set(fl.Name, s)
	}
	items := []string{}
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			items = append(items, item)
		}
	}
	if err := sv.Replace(items); err != nil {
		return err
	}
	fl.Changed = true
	return nil
}

// readSettingsFile parses the YAML config file at path: a mapping from
// flag names of fs to scalars or lists of scalars.
func readSettingsFile(path string, fs *pflag.FlagSet) (map[string]fileValue, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return map[string]fileValue{}, nil // an empty file sets nothing
		}
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config file %s: accepted: a single YAML document, found more", path)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return map[string]fileValue{}, nil
	}
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("config file %s:%d: accepted: a mapping of setting names to values", path, root.Line)
	}
	out := map[string]fileValue{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		key := k.Value
		fl := fs.Lookup(key)
		if k.Kind != yaml.ScalarNode || fl == nil || !settable(key) {
			return nil, fmt.Errorf("config file %s:%d: unknown key %q; accepted keys: %s", path, k.Line, key, strings.Join(settingNames(fs), ", "))
		}
		if _, dup := out[key]; dup {
			return nil, fmt.Errorf("config file %s:%d: key %q is given twice", path, k.Line, key)
		}
		fv := fileValue{line: k.Line}
		switch v.Kind {
		case yaml.ScalarNode:
			s := v.Value
			if v.Tag == "!!null" {
				s = ""
			}
			fv.scalar = &s
		case yaml.SequenceNode:
			for _, item := range v.Content {
				if item.Kind != yaml.ScalarNode {
					return nil, fmt.Errorf("config file %s:%d: key %q: accepted: a list of plain values", path, item.Line, key)
				}
				fv.list = append(fv.list, item.Value)
			}
			if fv.list == nil {
				fv.list = []string{}
			}
		default:
			return nil, fmt.Errorf("config file %s:%d: key %q: accepted: %s", path, v.Line, key, describeType(fl))
		}
		out[key] = fv
	}
	return out, nil
}

// settingNames are the names of the settable flags of fs, sorted.
func settingNames(fs *pflag.FlagSet) []string {
	var names []string
	fs.VisitAll(func(fl *pflag.Flag) {
		if settable(fl.Name) {
			names = append(names, fl.Name)
		}
	})
	sort.Strings(names)
	return names
}

// accepted words a flag's parse error for the user: which flag and what it
// accepts.
func accepted(fl *pflag.Flag, err error) string {
	return fmt.Sprintf("invalid value for --%s (%v); accepted: %s", fl.Name, err, describeType(fl))
}

// describeType says in words what values a flag accepts.
func describeType(fl *pflag.Flag) string {
	switch t := fl.Value.Type(); t {
	case "bool":
		return "true or false"
	case "duration":
		return "a duration such as 500ms, 30s or 5m"
	case "int", "int8", "int16", "int32", "int64":
		return "an integer"
	case "uint", "uint8", "uint16", "uint32", "uint64":
		return "a non-negative integer"
	case "float32", "float64":
		return "a number"
	case "string":
		return "a string"
	case "stringSlice", "stringArray":
		return "a list of strings (a YAML list, or comma-separated)"
	case "intSlice", "int32Slice", "int64Slice", "uintSlice":
		return "a list of integers (a YAML list, or comma-separated)"
	case "durationSlice":
		return "a list of durations (a YAML list, or comma-separated)"
	case "stringToString":
		return "key=value pairs, comma-separated"
	default:
		return "a value of type " + t
	}
}

// redacted stands for the value of a secret setting in --print-config.
const redacted = "<redacted>"

// secret tells whether a setting holds a credential (--consul-token), whose
// value --print-config does not print.
func secret(name string) bool { return strings.HasSuffix(name, "-token") }

// printSettings writes the effective value of every setting of fs as a
// YAML config file, in flag-name order; secrets that are set print as
// "<redacted>".
func printSettings(w io.Writer, fs *pflag.FlagSet) error {
	doc := &yaml.Node{Kind: yaml.MappingNode}
	for _, name := range settingNames(fs) {
		fl := fs.Lookup(name)
		var v *yaml.Node
		if sv, ok := fl.Value.(pflag.SliceValue); ok {
			v = &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
			for _, item := range sv.GetSlice() {
				v.Content = append(v.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: item})
			}
		} else if secret(name) && fl.Value.String() != "" {
			v = &yaml.Node{Kind: yaml.ScalarNode, Value: redacted, Style: yaml.DoubleQuotedStyle}
		} else {
			v = &yaml.Node{Kind: yaml.ScalarNode, Value: fl.Value.String()}
			if t := fl.Value.Type(); t != "bool" && !strings.Contains(t, "int") && !strings.HasPrefix(t, "float") {
				v.Style = yaml.DoubleQuotedStyle
			}
		}
		doc.Content = append(doc.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: name}, v)
	}
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return fmt.Errorf("print settings: %w", err)
	}
	return enc.Close()
}

// documentFlags adds to each flag's usage its environment variable and,
// where pflag would print none, its default, so that --help documents
// every setting.
func documentFlags(fs *pflag.FlagSet) {
	fs.VisitAll(func(fl *pflag.Flag) {
		if !settable(fl.Name) && fl.Name != configFlag {
			return
		}
		marker := "[env " + envName(fl.Name) + "]"
		if strings.Contains(fl.Usage, marker) {
			return
		}
		usage := fl.Usage
		if !strings.Contains(usage, "(default") && !printsDefault(fl) {
			usage += " (default: " + zeroDefault(fl) + ")"
		}
		fl.Usage = usage + " " + marker
	})
}

// printsDefault mirrors pflag: it prints "(default ...)" unless the default
// is the type's zero value.
func printsDefault(fl *pflag.Flag) bool {
	switch fl.DefValue {
	case "", "false", "0", "0s", "[]", "<nil>":
		return false
	}
	return true
}

func zeroDefault(fl *pflag.Flag) string {
	switch {
	case fl.Value.Type() == "bool":
		return "false"
	case slices.Contains([]string{"", "[]"}, fl.DefValue):
		return "none"
	default:
		return fl.DefValue
	}
}
