// Command compose-check validates Compose files with the Compose Specification's own loader
// (github.com/compose-spec/compose-go/v2, the library `docker compose` is built on): the
// Compose Spec JSON schema, interpolation, normalization and the model's consistency checks
// (undefined services, networks, volumes, ...), as `docker compose config --quiet` does.
//
// Usage: compose-check [-env-file FILE]... COMPOSE_FILE [OVERRIDE_FILE]...
//
// Environment variables come from the process environment, then the -env-file files (as
// `docker compose --env-file`). Exit 0 when the model loads; exit 1 with the loader's error
// on stderr otherwise. Every warning the loader logs (an unset variable, an obsolete
// attribute) also fails the check: a file that only works by accident is not valid here.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/sirupsen/logrus"
)

type envFiles []string

func (e *envFiles) String() string     { return strings.Join(*e, ",") }
func (e *envFiles) Set(v string) error { *e = append(*e, v); return nil }

// warnings records every loader message at warning level or above.
type warnings struct{ messages []string }

func (w *warnings) Levels() []logrus.Level {
	return []logrus.Level{logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel, logrus.WarnLevel}
}

func (w *warnings) Fire(entry *logrus.Entry) error {
	w.messages = append(w.messages, entry.Message)
	return nil
}

func main() {
	var files envFiles
	flag.Var(&files, "env-file", "environment file for interpolation (repeatable)")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: compose-check [-env-file FILE]... COMPOSE_FILE [OVERRIDE_FILE]...")
		os.Exit(2)
	}
	recorded := &warnings{}
	logrus.SetOutput(io.Discard) // reported below, once, with the errors
	logrus.AddHook(recorded)

	options, err := cli.NewProjectOptions(flag.Args(),
		cli.WithOsEnv,
		cli.WithEnvFiles(files...),
		cli.WithDotEnv,
		cli.WithInterpolation(true),
		cli.WithResolvedPaths(true),
		cli.WithNormalization(true),
		cli.WithConsistency(true),
	)
	if err == nil {
		var project interface{ ServiceNames() []string }
		project, err = options.LoadProject(context.Background())
		if err == nil && len(recorded.messages) == 0 {
			fmt.Printf("valid: %s (%d services)\n", strings.Join(flag.Args(), ", "),
				len(project.ServiceNames()))
			return
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "invalid: %v\n", err)
	}
	for _, message := range recorded.messages {
		fmt.Fprintf(os.Stderr, "invalid: %s\n", message)
	}
	os.Exit(1)
}
