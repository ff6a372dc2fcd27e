package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/term"
)

// maxPassword is bcrypt's limit: it ignores, and x/crypto refuses, longer.
const maxPassword = 72

func passwdCommand() *cli.Command {
	return &cli.Command{
		Name:      "passwd",
		Usage:     "read a password from stdin and print its bcrypt hash for [[relay.user]] password_hash",
		UsageText: "relayq passwd [--cost N] < password-file\n   printf '%s' 'secret' | relayq passwd",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "cost", Value: bcrypt.DefaultCost, Usage: fmt.Sprintf("bcrypt cost, %d-%d (each step doubles the time of a check)", bcrypt.MinCost, bcrypt.MaxCost)},
		},
		Action: func(c *cli.Context) error {
			pass, err := promptPassword(os.Stdin, os.Stderr)
			if err != nil {
				return cli.Exit("passwd: "+err.Error(), 1)
			}
			hash, err := hashPassword(pass, c.Int("cost"))
			if err != nil {
				return cli.Exit("passwd: "+err.Error(), 1)
			}
			fmt.Println(hash)
			return nil
		},
	}
}

// promptPassword reads the password: the first line of in. On a terminal
// it prompts on w, reads without echo (x/term puts the terminal back as it
// was, also when the read fails) and asks twice.
func promptPassword(in *os.File, w io.Writer) (string, error) {
	fd := int(in.Fd())
	if !term.IsTerminal(fd) {
		return readPassword(in)
	}
	ask := func(prompt string) (string, error) {
		fmt.Fprint(w, prompt)
		b, err := term.ReadPassword(fd)
		fmt.Fprintln(w)
		if err != nil {
			return "", err
		}
		return readPassword(strings.NewReader(string(b)))
	}
	first, err := ask("Password: ")
	if err != nil {
		return "", err
	}
	second, err := ask("Again: ")
	if err != nil {
		return "", err
	}
	if first != second {
		return "", errors.New("the passwords differ")
	}
	return first, nil
}

// readPassword returns the first line of r without its line break. Spaces
// are part of the password.
func readPassword(r io.Reader) (string, error) {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReader(r)
	}
	line, err := br.ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
	if line == "" {
		return "", errors.New("empty password")
	}
	return line, nil
}

// hashPassword returns the bcrypt hash of pass at cost.
func hashPassword(pass string, cost int) (string, error) {
	if len(pass) > maxPassword {
		return "", fmt.Errorf("password longer than %d bytes (bcrypt's limit)", maxPassword)
	}
	if cost < bcrypt.MinCost || cost > bcrypt.MaxCost {
		return "", fmt.Errorf("cost %d is not %d-%d", cost, bcrypt.MinCost, bcrypt.MaxCost)
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pass), cost)
	if err != nil {
		return "", err
	}
	return string(h), nil
}
