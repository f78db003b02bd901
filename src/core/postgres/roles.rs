//! Containment of the role `draupnir` in a finalised image.
//!
//! Owns what keeps an upload's roles and functions from lending the
//! developers' role more than its own rights: a fresh `draupnir` (an
//! upload's own role of that name is renamed away), with no attributes and
//! no memberships; every SECURITY DEFINER routine owned by `draupnir`; no
//! server-file function it may call; no superuser-only setting applied to
//! its sessions; and the checks, run over `draupnir`'s own connections,
//! that prove all of it ([`Problem`]).

use tokio_postgres::Client;

use super::cluster::{ADMIN_ROLE, CLIENT_ROLE};

/// Predefined roles whose members reach the host: run programs, read or
/// write any file the instance user can.
pub const SERVER_ROLES: &[&str] = &[
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
];

/// Built-in functions that touch server files: a fresh cluster lets only
/// superusers call them, and so does every image. `lo_import`/`lo_export`
/// read and write any path the instance user can.
pub const SERVER_FILE_FUNCTIONS: &[&str] = &[
    "lo_import",
    "lo_export",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
];

/// How many problems a failed proof names; the rest are counted.
pub const LISTED: usize = 5;

fn sql_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One statement, on one line (single-user mode reads a line per
/// statement): rename an existing role `role` to `<role>_upload_<n>`, the
/// first free name. Renaming keeps what the role owns for the
/// reassignment to `draupnir` and every grant it had stays with the old
/// role, which nothing can reach; dropping it would need every database
/// cleaned of it first.
pub fn rename_away_sql(role: &str) -> String {
    format!(
        "DO $draupnir$ DECLARE n int := 1; BEGIN \
         IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN \
         WHILE EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}_upload_' || n) LOOP n := n + 1; END LOOP; \
         EXECUTE format('ALTER ROLE %I RENAME TO %I', '{role}', '{role}_upload_' || n); \
         END IF; END $draupnir$;"
    )
}

/// The temporary admin role, fresh, with this finalise's password; one
/// statement per line (also fed to single-user mode). Stored as MD5: the
/// password is 256 random bits used for minutes on a Unix socket, and an
/// MD5 exchange costs one hash where SCRAM costs 4096 rounds on both ends
/// of each of the finalise's connections.
///
/// The session logs no statement text from here on (an upload may have set
/// `log_statement` for its superuser), so the password never reaches the
/// server log.
pub fn create_admin_sql(password: &str) -> String {
    format!(
        "{}\nSET log_statement = 'none';\nSET log_min_error_statement = panic;\nSET password_encryption = 'md5';\nCREATE ROLE {ADMIN_ROLE} SUPERUSER LOGIN PASSWORD '{password}';\n",
        rename_away_sql(ADMIN_ROLE)
    )
}

/// The role `draupnir`, made here and now: whatever the upload had under
/// that name is renamed away first.
pub fn create_client_sql() -> String {
    format!(
        "{}\nCREATE ROLE {CLIENT_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;\n",
        rename_away_sql(CLIENT_ROLE)
    )
}

/// Cluster-wide hygiene, run as a superuser after the script and the
/// reassignment: `draupnir`'s attributes again (the script may have
/// changed them), every membership it has revoked (admin-option grants
/// too, so it cannot grant itself anything), every setting a non-superuser
/// could not make itself removed from what applies to its sessions
/// (`session_preload_libraries` would load any library file at login), and
/// a database nobody may connect to handed back to the bootstrap superuser
/// (as its owner `draupnir` could open it).
pub fn cluster_hygiene_sql() -> String {
    format!(
        r#"
ALTER ROLE {CLIENT_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD NULL;
DO $draupnir$
DECLARE
  r record;
  me oid := (SELECT oid FROM pg_roles WHERE rolname = '{CLIENT_ROLE}');
  boot text := (SELECT rolname FROM pg_roles WHERE oid = 10);
  v16 boolean := current_setting('server_version_num')::int >= 160000;
BEGIN
  FOR r IN SELECT m.roleid::regrole::text AS role, m.grantor::regrole::text AS grantor
           FROM pg_auth_members m WHERE m.member = me
  LOOP
    EXECUTE format('REVOKE %s FROM {CLIENT_ROLE}%s CASCADE', r.role,
                   CASE WHEN v16 THEN ' GRANTED BY ' || r.grantor ELSE '' END);
  END LOOP;
  FOR r IN SELECT s.setrole, d.datname, split_part(c.setting, '=', 1) AS name
           FROM pg_db_role_setting s CROSS JOIN LATERAL unnest(s.setconfig) AS c(setting)
           LEFT JOIN pg_database d ON d.oid = s.setdatabase
           WHERE s.setrole IN (0, me) AND {unsafe_setting}
  LOOP
    EXECUTE format('ALTER ROLE %s%s RESET %I',
                   CASE WHEN r.setrole = 0 THEN 'ALL' ELSE '{CLIENT_ROLE}' END,
                   CASE WHEN r.datname IS NULL THEN '' ELSE format(' IN DATABASE %I', r.datname) END,
                   r.name);
  END LOOP;
  FOR r IN SELECT datname FROM pg_database WHERE NOT datallowconn AND datdba = me
  LOOP
    EXECUTE format('ALTER DATABASE %I OWNER TO %I', r.datname, boot);
  END LOOP;
END
$draupnir$;
"#,
        unsafe_setting = UNSAFE_SETTING
    )
}

/// A `pg_db_role_setting` entry `c.setting` (`name=value`) that a
/// non-superuser could not set itself. Dotted (extension) names are kept.
const UNSAFE_SETTING: &str = "position('.' IN split_part(c.setting, '=', 1)) = 0 \
     AND NOT EXISTS (SELECT 1 FROM pg_settings g WHERE g.name = split_part(c.setting, '=', 1) AND g.context = 'user')";

/// Hygiene of the current database, run as a superuser in every database
/// `draupnir` may connect to (templates included).
///
/// Every SECURITY DEFINER routine — in any schema, `pg_catalog` too,
/// extension members and event-trigger functions too, whatever its oid (an
/// upload's raw catalog could hold any) — is given to `draupnir`. Owned by
/// `draupnir`, it runs with `draupnir`'s rights, which are no more than the
/// caller's: nothing to escalate to, and the application still works,
/// since `draupnir` owns every object such a function was written to
/// reach. (Making them SECURITY INVOKER would change their definitions;
/// revoking EXECUTE would break the application.)
///
/// The built-in server-file functions go back to a fresh cluster's state:
/// owned by the bootstrap superuser, not executable by PUBLIC or
/// `draupnir`.
pub fn database_hygiene_sql() -> String {
    format!(
        r#"
DO $draupnir$
DECLARE
  r record;
  me oid := (SELECT oid FROM pg_roles WHERE rolname = '{CLIENT_ROLE}');
  boot text := (SELECT rolname FROM pg_roles WHERE oid = 10);
BEGIN
  FOR r IN SELECT p.oid::regprocedure AS sig FROM pg_proc p WHERE p.prosecdef AND p.proowner <> me
  LOOP
    EXECUTE format('ALTER ROUTINE %s OWNER TO {CLIENT_ROLE}', r.sig);
  END LOOP;
  FOR r IN SELECT p.oid::regprocedure AS sig, p.proowner FROM pg_proc p
           WHERE {file_function} AND has_function_privilege(me, p.oid, 'EXECUTE')
  LOOP
    IF r.proowner <> 10 THEN
      EXECUTE format('ALTER ROUTINE %s OWNER TO %I', r.sig, boot);
    END IF;
    EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC, {CLIENT_ROLE}', r.sig);
  END LOOP;
END
$draupnir$;
"#,
        file_function = file_function("p")
    )
}

fn file_function(p: &str) -> String {
    format!(
        "{p}.pronamespace = 'pg_catalog'::regnamespace AND {p}.proname IN ({})",
        sql_list(SERVER_FILE_FUNCTIONS)
    )
}

/// What keeps `draupnir` from being contained; each names what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("draupnir has {0}")]
    Attribute(String),
    #[error("draupnir is a member of {0}")]
    MemberOf(String),
    #[error("draupnir can reach {0}")]
    Reaches(String),
    #[error("SECURITY DEFINER function {function} in database {database} is owned by {owner}")]
    SecurityDefiner {
        database: String,
        function: String,
        owner: String,
    },
    #[error("function {function} in database {database} loads {library}, which is not a library installed under $libdir (drop it in the anonymisation script)")]
    ForeignLibrary {
        database: String,
        function: String,
        library: String,
    },
    #[error("function {function} in database {database} is an alias of the server-file function {internal} (drop it in the anonymisation script)")]
    FileFunctionAlias {
        database: String,
        function: String,
        internal: String,
    },
    #[error("draupnir may execute {function} in database {database}")]
    FileFunction { database: String, function: String },
    #[error("setting {name} applies to draupnir's sessions{}", .database.as_deref().map(|d| format!(" in database {d}")).unwrap_or_default())]
    Setting {
        database: Option<String>,
        name: String,
    },
    #[error("draupnir owns database {0}, which allows no connections")]
    ClosedDatabase(String),
}

/// Cluster-wide checks, asked as `draupnir`.
fn cluster_check_sql() -> String {
    format!(
        r#"
SELECT 'attribute', v.a, NULL::text, NULL::text
FROM pg_roles r, LATERAL (VALUES ('SUPERUSER', r.rolsuper), ('CREATEROLE', r.rolcreaterole),
     ('CREATEDB', r.rolcreatedb), ('REPLICATION', r.rolreplication), ('BYPASSRLS', r.rolbypassrls)) v(a, set)
WHERE r.rolname = '{CLIENT_ROLE}' AND v.set
UNION ALL
SELECT 'member', m.roleid::regrole::text, NULL, NULL
FROM pg_auth_members m JOIN pg_roles me ON me.oid = m.member WHERE me.rolname = '{CLIENT_ROLE}'
UNION ALL
SELECT 'reaches', r.rolname::text, NULL, NULL FROM pg_roles r
WHERE r.rolname <> '{CLIENT_ROLE}' AND (r.rolsuper OR r.rolname IN ({server_roles}))
  AND pg_has_role('{CLIENT_ROLE}', r.oid, 'MEMBER')
UNION ALL
SELECT 'setting', d.datname::text, split_part(c.setting, '=', 1), NULL
FROM pg_db_role_setting s CROSS JOIN LATERAL unnest(s.setconfig) AS c(setting)
LEFT JOIN pg_database d ON d.oid = s.setdatabase
WHERE s.setrole IN (0, (SELECT oid FROM pg_roles WHERE rolname = '{CLIENT_ROLE}')) AND {unsafe_setting}
UNION ALL
SELECT 'closed', d.datname::text, NULL, NULL FROM pg_database d JOIN pg_roles o ON o.oid = d.datdba
WHERE NOT d.datallowconn AND o.rolname = '{CLIENT_ROLE}'
"#,
        server_roles = sql_list(SERVER_ROLES),
        unsafe_setting = UNSAFE_SETTING
    )
}

/// Checks of the connected database, asked as `draupnir`.
fn database_check_sql() -> String {
    format!(
        r#"
SELECT 'definer', p.oid::regprocedure::text, pg_get_userbyid(p.proowner)::text
FROM pg_proc p WHERE p.prosecdef AND pg_get_userbyid(p.proowner) <> '{CLIENT_ROLE}'
UNION ALL
SELECT 'library', p.oid::regprocedure::text, coalesce(p.probin, '')
FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
WHERE l.lanname = 'c' AND (p.probin IS NULL OR p.probin !~ '^\$libdir/[^/]+$' OR p.probin ~ '\.\.')
UNION ALL
SELECT 'alias', p.oid::regprocedure::text, p.prosrc
FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
WHERE l.lanname = 'internal' AND p.oid >= 16384
  AND p.prosrc IN (SELECT b.prosrc FROM pg_proc b WHERE b.oid < 16384 AND {file_function_b})
UNION ALL
SELECT 'file', p.oid::regprocedure::text, NULL
FROM pg_proc p WHERE {file_function_p} AND has_function_privilege('{CLIENT_ROLE}', p.oid, 'EXECUTE')
"#,
        file_function_b = file_function("b"),
        file_function_p = file_function("p"),
    )
}

/// Everything wrong cluster-wide, as seen over `c`.
pub async fn cluster_problems(c: &Client) -> Result<Vec<Problem>, tokio_postgres::Error> {
    let rows = c.query(cluster_check_sql().as_str(), &[]).await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let kind: &str = r.get(0);
            let a: Option<String> = r.get(1);
            let b: Option<String> = r.get(2);
            Some(match kind {
                "attribute" => Problem::Attribute(a?),
                "member" => Problem::MemberOf(a?),
                "reaches" => Problem::Reaches(a?),
                "setting" => Problem::Setting {
                    database: a,
                    name: b?,
                },
                "closed" => Problem::ClosedDatabase(a?),
                _ => return None,
            })
        })
        .collect())
}

/// Everything wrong in database `database`, as seen over `c` connected to it.
pub async fn database_problems(
    c: &Client,
    database: &str,
) -> Result<Vec<Problem>, tokio_postgres::Error> {
    let rows = c.query(database_check_sql().as_str(), &[]).await?;
    let database = database.to_string();
    Ok(rows
        .iter()
        .filter_map(|r| {
            let kind: &str = r.get(0);
            let function: String = r.get(1);
            let detail: Option<String> = r.get(2);
            let database = database.clone();
            Some(match kind {
                "definer" => Problem::SecurityDefiner {
                    database,
                    function,
                    owner: detail?,
                },
                "library" => Problem::ForeignLibrary {
                    database,
                    function,
                    library: detail?,
                },
                "alias" => Problem::FileFunctionAlias {
                    database,
                    function,
                    internal: detail?,
                },
                "file" => Problem::FileFunction { database, function },
                _ => return None,
            })
        })
        .collect())
}

/// One line naming the first [`LISTED`] problems and counting the rest.
pub fn summary(problems: &[Problem]) -> String {
    let mut s = problems
        .iter()
        .take(LISTED)
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > LISTED {
        s.push_str(&format!(" (and {} more)", problems.len() - LISTED));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_bounded() {
        let many: Vec<Problem> = (0..8).map(|i| Problem::MemberOf(format!("r{i}"))).collect();
        let s = summary(&many);
        assert!(s.contains("r4") && !s.contains("r5"), "{s}");
        assert!(s.ends_with("(and 3 more)"), "{s}");
        assert!(!s.contains('\n'));
    }

    #[test]
    fn statements_for_single_user_mode_are_one_line_each() {
        let sql = create_admin_sql("0123abcd");
        assert_eq!(sql.lines().count(), 5, "{sql}");
        assert!(sql.contains("draupnir_finalise_upload_"));
    }
}
