//! SQL steps on DataFusion, run incrementally.
//!
//! A step's query is planned once, by DataFusion, as if its input were a table named `input`.
//! The plan is then split at the aggregation, if there is one:
//! - the part below it is stateless and runs on each new batch alone;
//! - the aggregation keeps each group's state row (key, aggregate states) in a
//!   [`StateTable`]; a batch merges its rows into fresh DataFusion `GroupsAccumulator`s over
//!   just the groups it touches, seeded from their rows (so every DataFusion aggregate works:
//!   count, sum, avg, min, max, stddev, approx_distinct, count(DISTINCT ...), ...). A large
//!   batch is first folded by DataFusion's partial aggregation, on every core, into one row per
//!   key and input partition, and those rows are merged instead;
//! - the part above it (projection, HAVING, ORDER BY in complete mode) runs on the aggregate's
//!   output: all groups in complete mode, the groups this batch changed in update mode.
//!
//! Each part's physical plan is made once and run again per batch: its scans ([`SlotExec`])
//! read what the engine put in a slot for the running batch. `now()` / `current_timestamp()`
//! read the batch's timestamp when they run, so they are not frozen into a plan.
//!
//! With a checkpoint, each batch also writes the touched groups' state rows to the state store,
//! and a restart loads them back into the state table.
//! Queries a stream cannot run (ORDER BY or LIMIT without an aggregation in complete mode,
//! window functions, several aggregations, grouping sets) are refused when the step is built,
//! with a message that says why.

use std::sync::{Arc, Mutex};

use arrow_array::{Array, ArrayRef, BinaryArray, BooleanArray, RecordBatch};
use arrow_row::{RowConverter, SortField};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::config::Dialect;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::utils::normalize_float_zero;
use datafusion::common::{Column, DFSchema};
use datafusion::datasource::provider_as_source;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{EmitTo, Expr, GroupsAccumulator, LogicalPlan, LogicalPlanBuilder, TableType};
use datafusion::optimizer::Optimizer;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_expr::aggregate::{AggregateFunctionExpr, LoweredAggregateBuilder};
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr, create_physical_expr};
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType, reset_plan_states};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, collect_partitioned,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::{
    AccessExpr, Expr as SqlExpr, Ident, ObjectName, ObjectNamePart, Subscript, Value as SqlValue, visit_expressions_mut,
};

use crate::error::{Error, Result};
use crate::spec::OutputMode;
use crate::state::StateStore;

/// An aggregate and its `FILTER (WHERE ...)`, if any.
type AggregateWithFilter = (Arc<AggregateFunctionExpr>, Option<Arc<dyn PhysicalExpr>>);

mod dedup;
mod expiry;
mod functions;
mod session;
mod spark_time;
mod state_table;
mod window;

use expiry::{EventTimeKey, Expiry};
use functions::BatchClock;
use state_table::StateTable;

pub(crate) use dedup::DedupStep;

/// Batches shared between the engine and a table the plan scans.
#[derive(Debug, Clone, Default)]
struct Slot(Arc<Mutex<Vec<RecordBatch>>>);

impl Slot {
    fn set(&self, batches: Vec<RecordBatch>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = batches;
    }
    fn get(&self) -> Vec<RecordBatch> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A table whose rows are whatever the engine put in its slot for the current batch.
#[derive(Debug)]
struct SlotTable {
    schema: SchemaRef,
    slot: Slot,
    partitions: usize,
}

#[async_trait::async_trait]
impl TableProvider for SlotTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn table_type(&self) -> TableType {
        TableType::Temporary
    }
    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let partitions = self.partitions.max(1);
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Arc::new(SlotExec {
            slot: self.slot.clone(),
            schema,
            projection: projection.cloned(),
            partitions,
            properties: Arc::new(properties),
        }))
    }
}

/// Scans a [`Slot`]: what it holds when the plan *runs*, not when it was planned, so a physical
/// plan made once serves every batch. Each batch is spread over the partitions in slices, so
/// DataFusion can use every core.
#[derive(Debug)]
struct SlotExec {
    slot: Slot,
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    partitions: usize,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for SlotExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlotExec: partitions={}", self.partitions)
    }
}

impl ExecutionPlan for SlotExec {
    fn name(&self) -> &str {
        "SlotExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }
    fn apply_expressions(
        &self,
        _: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }
    fn with_new_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }
    fn execute(&self, partition: usize, _: Arc<TaskContext>) -> datafusion::error::Result<SendableRecordBatchStream> {
        let mut mine = Vec::new();
        let mut i = 0;
        for b in self.slot.get() {
            let n = b.num_rows();
            let chunk = n.div_ceil(self.partitions).max(1);
            let mut off = 0;
            while off < n {
                let len = chunk.min(n - off);
                if i % self.partitions == partition {
                    let part = b.slice(off, len);
                    mine.push(match &self.projection {
                        Some(p) => part.project(p)?,
                        None => part,
                    });
                }
                off += len;
                i += 1;
            }
        }
        Ok(Box::pin(MemoryStream::try_new(mine, self.schema.clone(), None)?))
    }
}

/// A physical plan made once and run again on each batch (its operators' run state reset).
#[derive(Debug)]
struct CachedPlan {
    plan: Arc<dyn ExecutionPlan>,
    /// Made once: building it copies the session's configuration and function registries.
    task: Arc<TaskContext>,
    /// For a plan that only filters and projects its scan: the same operators applied to each
    /// input batch in turn, without the executor.
    direct: Option<Direct>,
}

/// Inputs of at most this many rows take a plan's [`Direct`] path: for them, the executor's
/// set-up (streams and tasks per partition) costs more than the work; larger ones are split
/// across the cores by the executor.
const DIRECT_MAX_ROWS: usize = 8192;

impl CachedPlan {
    async fn new(ctx: &SessionContext, plan: &LogicalPlan) -> datafusion::error::Result<Self> {
        let plan = ctx.state().create_physical_plan(plan).await?;
        let direct = Direct::of(&plan);
        Ok(CachedPlan { plan, task: ctx.task_ctx(), direct })
    }

    /// Runs the plan on the slot's batches. The output order is fixed for a given input: the
    /// direct path keeps input order; the executor's output comes in partition order (a
    /// coalesced stream would interleave partitions as they finish).
    async fn run(&self) -> datafusion::error::Result<Vec<RecordBatch>> {
        if let Some(direct) = &self.direct {
            let input = direct.slot.get();
            if input.iter().map(RecordBatch::num_rows).sum::<usize>() <= DIRECT_MAX_ROWS {
                return direct.run(input, &self.plan.schema());
            }
        }
        let plan = reset_plan_states(self.plan.clone())?;
        let out = collect_partitioned(plan, self.task.clone()).await?;
        Ok(out.into_iter().flatten().filter(|b| b.num_rows() > 0).collect())
    }
}

/// A row-by-row plan (projections and filters over the scan) as operators applied to each
/// scanned batch, bottom up: the physical expressions are the plan's own, so the output has the
/// executor's rows, in input order (the executor gives partition order, which interleaves
/// slices of several input batches; nothing downstream of a stateless step may rely on either).
struct Direct {
    slot: Slot,
    ops: Vec<DirectOp>,
}

enum DirectOp {
    /// The scan's column projection.
    Columns(Vec<usize>),
    /// A filter, and the columns it keeps.
    Filter(Arc<dyn PhysicalExpr>, Option<Vec<usize>>),
    /// A projection and its output schema.
    Project(Vec<Arc<dyn PhysicalExpr>>, SchemaRef),
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Direct({} operators)", self.ops.len())
    }
}

impl Direct {
    /// The direct form of `plan`, if it has one.
    fn of(plan: &Arc<dyn ExecutionPlan>) -> Option<Direct> {
        use datafusion::physical_plan::coop::CooperativeExec;
        use datafusion::physical_plan::filter::FilterExec;
        use datafusion::physical_plan::projection::ProjectionExec;
        let mut ops = Vec::new();
        let mut node = plan.clone();
        loop {
            if node.fetch().is_some() {
                return None;
            }
            let next = if let Some(p) = node.downcast_ref::<ProjectionExec>() {
                let exprs = p.expr().iter().map(|e| e.expr.clone()).collect();
                ops.push(DirectOp::Project(exprs, p.schema()));
                p.input().clone()
            } else if let Some(f) = node.downcast_ref::<FilterExec>() {
                ops.push(DirectOp::Filter(f.predicate().clone(), f.projection().as_ref().map(|p| p.to_vec())));
                f.input().clone()
            } else if let Some(c) = node.downcast_ref::<CooperativeExec>() {
                // Yields to the scheduler between batches; a direct run is one short step.
                c.input().clone()
            } else if let Some(scan) = node.downcast_ref::<SlotExec>() {
                ops.extend(scan.projection.clone().map(DirectOp::Columns));
                ops.reverse();
                return Some(Direct { slot: scan.slot.clone(), ops });
            } else {
                return None;
            };
            node = next;
        }
    }

    fn run(&self, input: Vec<RecordBatch>, schema: &SchemaRef) -> datafusion::error::Result<Vec<RecordBatch>> {
        let mut out = Vec::with_capacity(input.len());
        for mut b in input {
            for op in &self.ops {
                if b.num_rows() == 0 {
                    break;
                }
                b = match op {
                    DirectOp::Columns(p) => b.project(p)?,
                    DirectOp::Filter(predicate, keep) => {
                        let b = datafusion::physical_plan::filter::batch_filter(&b, predicate)?;
                        match keep {
                            Some(p) => b.project(p)?,
                            None => b,
                        }
                    }
                    DirectOp::Project(exprs, schema) => {
                        let n = b.num_rows();
                        let columns = exprs
                            .iter()
                            .map(|e| e.evaluate(&b).and_then(|v| v.into_array(n)))
                            .collect::<datafusion::error::Result<Vec<_>>>()?;
                        let options = arrow_array::RecordBatchOptions::new().with_row_count(Some(n));
                        RecordBatch::try_new_with_options(schema.clone(), columns, &options)?
                    }
                };
            }
            if b.num_rows() > 0 && b.schema() == *schema {
                out.push(b);
            } else if b.num_rows() > 0 {
                // The plan's schema exactly (names and metadata), as the executor gives it.
                out.push(RecordBatch::try_new_with_options(
                    schema.clone(),
                    b.columns().to_vec(),
                    &arrow_array::RecordBatchOptions::new().with_row_count(Some(b.num_rows())),
                )?);
            }
        }
        Ok(out)
    }
}

/// A SQL step.
pub(crate) struct SqlStep {
    index: usize,
    /// The running batch's timestamp, read by `now()` / `current_timestamp()`.
    clock: BatchClock,
    input: Slot,
    output_schema: SchemaRef,
    kind: Kind,
}

enum Kind {
    Stateless(CachedPlan),
    Aggregate(Box<Aggregator>),
}

fn new_context(clock: &BatchClock) -> SessionContext {
    let parallelism = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut config = SessionConfig::new().with_target_partitions(parallelism).with_information_schema(false);
    config.options_mut().sql_parser.dialect = Dialect::MySQL;
    // The aggregation's first phase gives up on folding rows early when its keys barely repeat
    // (its table would hold the whole input for nothing): after 8 k rows of a partition, not 100 k.
    config.options_mut().execution.skip_partial_aggregation_probe_rows_threshold = DIRECT_MAX_ROWS;
    // The single-distinct rewrite turns count(DISTINCT x) into two aggregations; the
    // incremental aggregator handles distinct accumulators directly, so keep it as one.
    let rules =
        Optimizer::new().rules.into_iter().filter(|r| r.name() != "single_distinct_aggregation_to_group_by").collect();
    let state =
        SessionStateBuilder::new().with_config(config).with_default_features().with_optimizer_rules(rules).build();
    let ctx = SessionContext::new_with_state(state);
    functions::register(&ctx, clock);
    window::register(&ctx);
    spark_time::register(&ctx);
    ctx
}

/// Spark resolves column names case-insensitively, DataFusion folds unquoted names to lower
/// case: an unquoted name that matches exactly one input column ignoring case (Kafka's
/// `timestampType`) becomes that column, quoted.
fn resolve_case(ident: &mut Ident, columns: &[String]) {
    if ident.quote_style.is_some() || columns.iter().any(|c| *c == ident.value.to_lowercase()) {
        return;
    }
    let mut matches = columns.iter().filter(|c| c.eq_ignore_ascii_case(&ident.value));
    if let (Some(c), None) = (matches.next(), matches.next()) {
        ident.value = c.clone();
        ident.quote_style = Some('`');
    }
}

/// Spark names an unaliased `window(...)` / `session_window(...)` select item `window` /
/// `session_window`; so does Sluice (in every SELECT of the query).
fn name_windows(query: &mut datafusion::sql::sqlparser::ast::Query) {
    use datafusion::sql::sqlparser::ast::{SelectItem, SetExpr};
    let SetExpr::Select(select) = query.body.as_mut() else { return };
    for item in &mut select.projection {
        let SelectItem::UnnamedExpr(SqlExpr::Function(f)) = item else { continue };
        let name = f.name.to_string().to_ascii_lowercase();
        if name == "window" || name == "session_window" {
            let expr = SqlExpr::Function(f.clone());
            *item = SelectItem::ExprWithAlias { expr, alias: Ident::new(name) };
        }
    }
}

/// Spark syntax the parser does not take, as calls it does: `EXTRACT(field FROM x)` as
/// `date_part('field', x)` (the parser knows only some of Spark's fields: `DAYOFWEEK_ISO`,
/// `YEAROFWEEK`, `QTR` would not parse), and `timestampadd(MONTH, n, ts)` /
/// `timestampdiff(SECOND, a, b)` (and Spark's `dateadd` / `datediff` / `date_add` /
/// `date_diff` spellings of them) with the unit as a string.
fn spark_syntax(sql: &str) -> String {
    const UNITS: &str = "year|quarter|month|week|dayofyear|day|hour|minute|second|millisecond|microsecond";
    static RULES: std::sync::OnceLock<Vec<(regex::Regex, &'static str)>> = std::sync::OnceLock::new();
    let rules = RULES.get_or_init(|| {
        let rule = |re: String, to| regex::Regex::new(&re).ok().map(|r| (r, to));
        [
            rule(r"(?i)\bextract\s*\(\s*([a-z_]+)\s+from\b".into(), "date_part('$1', "),
            rule(format!(r"(?i)\b(?:timestampadd|dateadd|date_add)\s*\(\s*({UNITS})\s*,"), "timestampadd('$1',"),
            rule(format!(r"(?i)\b(?:timestampdiff|datediff|date_diff)\s*\(\s*({UNITS})\s*,"), "timestampdiff('$1',"),
        ]
        .into_iter()
        .flatten()
        .collect()
    });
    let mut out = sql.to_string();
    for (re, to) in rules {
        out = re.replace_all(&out, *to).into_owned();
    }
    out
}

/// A step's planned query, and what the window rewrite added (column, its time column).
struct Planned {
    plan: LogicalPlan,
    windows: Vec<(String, Expr)>,
}

/// Parses `sql` (Spark-flavoured: backquoted identifiers, backslash escapes in strings,
/// `explode`, `window`, case-insensitive column names) and plans it over input columns `columns`.
async fn plan_sql(ctx: &SessionContext, sql: &str, columns: &[String]) -> datafusion::error::Result<Planned> {
    let state = ctx.state();
    let sql = spark_syntax(sql);
    let mut statement = state.sql_to_statement(&sql, &Dialect::MySQL)?;
    if let datafusion::sql::parser::Statement::Statement(s) = &mut statement {
        if let datafusion::sql::sqlparser::ast::Statement::Query(q) = s.as_mut() {
            name_windows(q);
        }
        let _ = visit_expressions_mut(s.as_mut(), |e| {
            // `s RLIKE p` / `s REGEXP p`: Spark's Java-regex find, the `rlike` function.
            if let SqlExpr::RLike { negated, expr, pattern, .. } = e {
                let text = format!("{}rlike({expr}, {pattern})", if *negated { "NOT " } else { "" });
                let dialect = datafusion::sql::sqlparser::dialect::MySqlDialect {};
                let parsed = datafusion::sql::sqlparser::parser::Parser::new(&dialect)
                    .try_with_sql(&text)
                    .and_then(|mut p| p.parse_expr());
                if let Ok(call) = parsed {
                    *e = call;
                }
            }
            match e {
                SqlExpr::Function(f) if f.name.to_string().eq_ignore_ascii_case("explode") => {
                    f.name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new("unnest"))]);
                }
                // `window(ts, '10 minutes').start`: a field of a function's struct, as Spark
                // allows; DataFusion reads a field of a column only, or `expr['start']`.
                SqlExpr::CompoundFieldAccess { root, access_chain }
                    if !matches!(root.as_ref(), SqlExpr::Identifier(_) | SqlExpr::CompoundIdentifier(_)) =>
                {
                    for a in access_chain.iter_mut() {
                        if let AccessExpr::Dot(SqlExpr::Identifier(id)) = a {
                            let index = SqlExpr::value(SqlValue::SingleQuotedString(id.value.clone()));
                            *a = AccessExpr::Subscript(Subscript::Index { index });
                        }
                    }
                }
                SqlExpr::Identifier(ident) => resolve_case(ident, columns),
                SqlExpr::CompoundIdentifier(parts) => {
                    if let Some(last) = parts.last_mut() {
                        resolve_case(last, columns);
                    }
                }
                _ => {}
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
    } else {
        return Err(DataFusionError::Plan("a SQL step must be a query (SELECT ...)".into()));
    }
    let plan = state.statement_to_plan(statement).await?;
    let (plan, windows) = window::rewrite(plan)?;
    Ok(Planned { plan: state.optimize(&plan)?, windows })
}

fn contains_aggregate(plan: &LogicalPlan) -> bool {
    plan.exists(|n| Ok(matches!(n, LogicalPlan::Aggregate(_)))).unwrap_or(false)
}

impl SqlStep {
    /// Plans `query` over an input of `input_schema`. `mode` is the query's output mode, which
    /// decides whether ORDER BY / LIMIT after an aggregation are allowed.
    /// `watermark` names the input column a watermark is defined on, if any.
    pub(crate) async fn try_new(
        index: usize,
        query: &str,
        input_schema: SchemaRef,
        mode: OutputMode,
        watermark: Option<&str>,
    ) -> Result<Self> {
        let sql_err = |source| Error::Sql { step: index, source };
        let unsupported = |message: String| Error::Unsupported { step: index, message };
        let clock = BatchClock::default();
        let ctx = new_context(&clock);
        let input = Slot::default();
        let partitions = ctx.state().config().target_partitions();
        ctx.register_table(
            "input",
            Arc::new(SlotTable { schema: input_schema.clone(), slot: input.clone(), partitions }),
        )
        .map_err(sql_err)?;
        let columns: Vec<String> = input_schema.fields().iter().map(|f| f.name().clone()).collect();
        let Planned { plan, windows } = plan_sql(&ctx, query, &columns).await.map_err(sql_err)?;

        // Refuse what a stream cannot do, naming the operator.
        let mut aggregates = 0;
        let mut problem = None;
        plan.apply(|node| {
            let what = match node {
                LogicalPlan::Aggregate(a) => {
                    aggregates += 1;
                    if a.group_expr.iter().any(|e| matches!(e, Expr::GroupingSet(_))) {
                        Some("GROUPING SETS, CUBE and ROLLUP are not supported on streams".to_string())
                    } else {
                        None
                    }
                }
                LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => {
                    let op = if matches!(node, LogicalPlan::Sort(_)) { "ORDER BY" } else { "LIMIT" };
                    if !contains_aggregate(node) {
                        Some(format!("{op} is not supported on streams without an aggregation (a stream never ends, so it cannot be sorted or cut)"))
                    } else if mode != OutputMode::Complete {
                        Some(format!("{op} after an aggregation is only supported in complete output mode (this query runs in {mode} mode)"))
                    } else {
                        None
                    }
                }
                LogicalPlan::Window(_) => Some("window functions (OVER ...) are not supported on streams; use GROUP BY".into()),
                LogicalPlan::Distinct(_) => Some("SELECT DISTINCT is not supported yet on streams; use GROUP BY".into()),
                LogicalPlan::Join(_) | LogicalPlan::Union(_) => Some("joins and unions are not supported in a SQL step yet".into()),
                _ => None,
            };
            if let Some(w) = what {
                problem = Some(w);
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map_err(sql_err)?;
        if let Some(p) = problem {
            return Err(unsupported(p));
        }
        let output_schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let kind = match aggregates {
            0 => Kind::Stateless(CachedPlan::new(&ctx, &plan).await.map_err(sql_err)?),
            1 => {
                let event_time = watermark.map(|column| (column, windows.as_slice()));
                let agg = Aggregator::try_new(&ctx, &plan, event_time).await.map_err(sql_err)?;
                if agg.sessions.is_some() && mode == OutputMode::Update {
                    return Err(unsupported(
                        "session windows do not support update mode, as in Spark (a session's key changes as it grows); use append (with a watermark) or complete".into(),
                    ));
                }
                Kind::Aggregate(Box::new(agg))
            }
            _ => {
                return Err(unsupported(
                    "more than one aggregation in a query is not supported on streams; split it into steps or use one GROUP BY".into(),
                ));
            }
        };
        Ok(SqlStep { index, clock, input, output_schema, kind })
    }

    /// Whether this step keeps state across batches (has an aggregation).
    pub(crate) fn is_stateful(&self) -> bool {
        matches!(self.kind, Kind::Aggregate(_))
    }

    /// Whether its aggregation groups by the watermark's event time (a window of it, or the
    /// column itself), so the watermark closes groups: append mode can emit them, and update
    /// and append modes evict their state.
    pub(crate) fn has_event_time_key(&self) -> bool {
        matches!(&self.kind, Kind::Aggregate(a) if a.event_time.is_some())
    }

    /// The schema of the step's output.
    pub(crate) fn output_schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    /// Runs the step on batch `batch_id`, whose timestamp (`now()`, `current_timestamp()`) is
    /// `timestamp_ms`, with the batch's event-time `watermark`, if the query has one. For an
    /// aggregation, returns what `mode` says to emit and, with a state store attached, commits
    /// state version `batch_id + 1`.
    pub(crate) async fn process(
        &mut self,
        batch_id: u64,
        timestamp_ms: i64,
        watermark: Option<BatchWatermark>,
        input: Vec<RecordBatch>,
        mode: OutputMode,
    ) -> Result<Vec<RecordBatch>> {
        let index = self.index;
        let sql_err = |source| Error::Sql { step: index, source };
        self.clock.set(timestamp_ms);
        let rows = input.iter().map(RecordBatch::num_rows).sum();
        self.input.set(input);
        let out = match &mut self.kind {
            Kind::Stateless(plan) => plan.run().await.map_err(sql_err),
            Kind::Aggregate(agg) => match agg.process(mode, watermark, rows).await.map_err(sql_err) {
                Err(e) => Err(e),
                Ok((out, delta, removed)) => {
                    let started = std::time::Instant::now();
                    if let Some(store) = &agg.store {
                        let schema = &agg.state_schema;
                        let delta = delta.unwrap_or_else(|| RecordBatch::new_empty(schema.clone()));
                        store.commit(batch_id + 1, schema, &delta, &removed, || agg.snapshot()).await?;
                    }
                    agg.commit_ms = started.elapsed().as_millis() as u64;
                    Ok(out)
                }
            },
        };
        self.input.set(Vec::new());
        out
    }

    /// Waits for state written in the background (a snapshot) and reports its error, if any.
    pub(crate) async fn flush_state(&mut self) -> Result<()> {
        match &self.kind {
            Kind::Aggregate(agg) => match &agg.store {
                Some(store) => store.flush().await,
                None => Ok(()),
            },
            Kind::Stateless(_) => Ok(()),
        }
    }

    /// Attaches durable state: checks the stored fingerprint against this query's and loads
    /// state `version`.
    pub(crate) async fn attach_state(&mut self, store: StateStore, version: u64, checkpoint: &str) -> Result<()> {
        let index = self.index;
        let Kind::Aggregate(agg) = &mut self.kind else { return Ok(()) };
        let what = format!("the aggregation in SQL step {index} (grouping keys, aggregate functions, state schema)");
        store.check_fingerprint(&agg.fingerprint(), checkpoint, what).await?;
        let rows = store.load(version).await?;
        let rows = crate::state::last_per_key(&agg.state_schema, &rows, agg.group_exprs.len())?;
        agg.restore(rows).map_err(|source| Error::Sql { step: index, source })?;
        agg.store = Some(store);
        Ok(())
    }

    /// The fingerprint of the step's state layout, for a stateful step.
    pub(crate) fn state_fingerprint(&self) -> Option<String> {
        match &self.kind {
            Kind::Aggregate(a) => Some(a.fingerprint()),
            Kind::Stateless(_) => None,
        }
    }

    /// State metrics, for a stateful step.
    pub(crate) fn state_metrics(&self) -> Option<StateMetrics> {
        match &self.kind {
            Kind::Aggregate(a) => Some(a.metrics()),
            Kind::Stateless(_) => None,
        }
    }
}

/// The watermarks a batch runs with (Spark's, with several stateful operators allowed): rows
/// at or behind `late_events_ms` (the previous batch's watermark) are late and dropped; groups
/// at or behind `eviction_ms` (this batch's) are closed and evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchWatermark {
    pub(crate) late_events_ms: i64,
    pub(crate) eviction_ms: i64,
}

/// State metrics of one stateful operator (Spark's `stateOperators[]`).
#[derive(Debug, Clone, Default)]
pub(crate) struct StateMetrics {
    pub(crate) num_rows_total: u64,
    pub(crate) num_rows_updated: u64,
    pub(crate) num_rows_removed: u64,
    pub(crate) num_rows_dropped_by_watermark: u64,
    pub(crate) memory_used_bytes: u64,
    pub(crate) commit_time_ms: u64,
}

/// An incremental grouped aggregation over a [`StateTable`] (group keys in Arrow's row format,
/// each aggregate's state fields). A batch interns its keys, gathers the state rows of the groups
/// it touches, merges its rows into fresh DataFusion `GroupsAccumulator`s over just those
/// groups, and appends their new state rows: its cost follows the batch, not the state.
struct Aggregator {
    /// The plan below the aggregation (reads the `input` slot).
    below: CachedPlan,
    /// The aggregation's first phase over `below`, run by DataFusion on each input partition
    /// in parallel: one row per key and partition (keys, then each aggregate's state fields).
    /// For inputs of more than `DIRECT_MAX_ROWS` rows; `None` for a global aggregate or when
    /// an aggregate depends on its rows' order.
    partial: Option<CachedPlan>,
    /// Large batches to run row by row before `partial` is tried again (it did not fold the
    /// last one it ran).
    partial_skip: u32,
    /// The plan above it (reads `out`).
    above: CachedPlan,
    out: Slot,
    out_schema: SchemaRef,
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    aggs: Vec<AggregateWithFilter>,
    /// Each aggregate's first field among the state fields, and its number of state fields.
    state_cols: Vec<(usize, usize)>,
    /// Group keys to and from the binary keys of the state table; `None` for a global aggregate.
    converter: Option<Arc<RowConverter>>,
    /// Group keys then each aggregate's state fields: the rows the state store keeps.
    state_schema: SchemaRef,
    table: StateTable,
    /// Per group id, its index among the current batch's groups (`u32::MAX`: not touched).
    local_of: Vec<u32>,
    last_updated: u64,
    /// The group key holding the watermark's event time, if any.
    event_time: Option<EventTimeKey>,
    /// Groups by event-time bound, for eviction.
    expiry: Expiry,
    /// For a GROUP BY `session_window(...)`: the session key and the open sessions.
    sessions: Option<session::Sessions>,
    last_removed: u64,
    last_dropped: u64,
    /// This batch's rows with an event-time bound at or before this (µs) are late.
    late_at_us: Option<i64>,
    /// This batch closes the groups with an event-time bound at or before this (µs).
    evict_at_us: Option<i64>,
    /// Keys of the late rows this batch dropped (Spark counts them after partial aggregation:
    /// one per late group).
    late_keys: std::collections::HashSet<Vec<u8>>,
    /// Durable state, when the query has a checkpoint.
    store: Option<StateStore>,
    commit_ms: u64,
}

/// The state rows of groups a batch brings in, and each one's local index.
type KnownState = (RecordBatch, Vec<usize>);

/// What one batch has touched so far.
struct Touched {
    /// Group ids, in the order the batch first saw them (their local index).
    gids: Vec<u32>,
    /// Where each group's key was first seen: (input batch, row).
    key_at: Vec<(usize, usize)>,
    /// The key columns of each input batch.
    keys: Vec<Vec<ArrayRef>>,
    /// One accumulator per aggregate over the local indices.
    accs: Vec<Box<dyn GroupsAccumulator>>,
    /// The batch's distinct group keys (`None` for a global aggregate).
    values: Option<Box<dyn GroupValues>>,
    /// Per distinct key in `values`, its group's local index.
    local_of_value: Vec<u32>,
}

fn group_accumulator(agg: &Arc<AggregateFunctionExpr>) -> datafusion::error::Result<Box<dyn GroupsAccumulator>> {
    if agg.groups_accumulator_supported() {
        agg.create_groups_accumulator()
    } else {
        let a = agg.clone();
        Ok(Box::new(GroupsAccumulatorAdapter::new(move || a.create_accumulator())))
    }
}

const AGG_TABLE: &str = "__sluice_aggregate";

/// Large batches run row by row after the aggregation's first phase failed to fold one to
/// half its rows, before it is tried again.
const PARTIAL_RETRY_BATCHES: u32 = 16;

impl Aggregator {
    /// `event_time`: the watermark's column, and the columns the window rewrite added (each
    /// with its time column).
    async fn try_new(
        ctx: &SessionContext,
        plan: &LogicalPlan,
        event_time: Option<(&str, &[(String, Expr)])>,
    ) -> datafusion::error::Result<Self> {
        let mut found = None;
        plan.apply(|n| {
            if let LogicalPlan::Aggregate(a) = n {
                found = Some(a.clone());
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        let agg = found.ok_or_else(|| DataFusionError::Internal("no aggregate in plan".into()))?;
        let event_time = event_time.and_then(|(column, windows)| event_time_key(&agg.group_expr, column, windows));
        let below = agg.input.as_ref().clone();
        let below_df: &DFSchema = below.schema();
        let below_arrow: Schema = below_df.as_arrow().clone();
        let props = ExecutionProps::new();
        let pctx = PhysicalPlanningContext::default();
        let group_exprs = agg
            .group_expr
            .iter()
            .map(|e| create_physical_expr(e, below_df, &props, &pctx))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let mut aggs = Vec::new();
        for e in &agg.aggr_expr {
            let lowered = LoweredAggregateBuilder::new(e, below_df, &below_arrow, &props, &pctx).build()?;
            aggs.push((lowered.aggregate, lowered.filter));
        }

        // The aggregate's output, as a table with plain column names...
        let agg_df = agg.schema.clone();
        let out_fields: Vec<Field> = agg_df
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| Field::new(format!("f{i}"), f.data_type().clone(), true))
            .collect();
        let out_schema = Arc::new(Schema::new(out_fields));
        let out = Slot::default();
        let partitions = ctx.state().config().target_partitions();
        let table = Arc::new(SlotTable { schema: out_schema.clone(), slot: out.clone(), partitions });
        // ...projected back to the aggregate's qualified names, so the plan above still binds.
        let exprs: Vec<Expr> = agg_df
            .iter()
            .enumerate()
            .map(|(i, (q, f))| {
                Expr::Column(Column::new(Some(AGG_TABLE), format!("f{i}"))).alias_qualified(q.cloned(), f.name())
            })
            .collect();
        let replacement =
            LogicalPlanBuilder::scan(AGG_TABLE, provider_as_source(table), None)?.project(exprs)?.build()?;
        let above = plan
            .clone()
            .transform_up(|n| {
                Ok(if matches!(n, LogicalPlan::Aggregate(_)) {
                    Transformed::yes(replacement.clone())
                } else {
                    Transformed::no(n)
                })
            })?
            .data;

        let nk = group_exprs.len();
        let sessions = match session::session_key(&agg.group_expr) {
            Some(k) => {
                let types: Vec<DataType> = out_schema.fields().iter().take(nk).map(|f| f.data_type().clone()).collect();
                Some(session::Sessions::try_new(k, &types)?)
            }
            None => None,
        };
        let converter = if nk == 0 {
            None
        } else {
            let fields = out_schema.fields().iter().take(nk).map(|f| SortField::new(f.data_type().clone())).collect();
            Some(Arc::new(RowConverter::new(fields)?))
        };
        let names: Vec<String> = agg_df.fields().iter().map(|f| f.name().clone()).collect();
        let state_schema = state_schema(&out_schema, &names, nk, &aggs)?;
        let mut page_fields = vec![Field::new("key", DataType::Binary, false)];
        page_fields.extend(state_schema.fields().iter().skip(nk).map(|f| f.as_ref().clone()));
        let mut state_cols = Vec::with_capacity(aggs.len());
        let mut col = 0;
        for (agg, _) in &aggs {
            let width = agg.state_fields()?.len();
            state_cols.push((col, width));
            col += width;
        }
        let below = CachedPlan::new(ctx, &below).await?;
        // Not for a global aggregate: its first phase emits a row per partition even for an
        // input with no rows left (which would then update the group), and one group needs no
        // parallel folding.
        let partial =
            if !group_exprs.is_empty() && aggs.iter().all(|(a, _)| a.order_bys().is_empty()) && sessions.is_none() {
                let keys = group_exprs.iter().enumerate().map(|(i, e)| (e.clone(), format!("k{i}"))).collect();
                let exec = AggregateExec::try_new(
                    AggregateMode::Partial,
                    PhysicalGroupBy::new_single(keys),
                    aggs.iter().map(|(a, _)| a.clone()).collect(),
                    aggs.iter().map(|(_, f)| f.clone()).collect(),
                    below.plan.clone(),
                    below.plan.schema(),
                )?;
                Some(CachedPlan { plan: Arc::new(exec), task: below.task.clone(), direct: None })
            } else {
                None
            };
        Ok(Aggregator {
            below,
            partial,
            partial_skip: 0,
            above: CachedPlan::new(ctx, &above).await?,
            out,
            out_schema,
            group_exprs,
            aggs,
            state_cols,
            converter,
            table: StateTable::new(Arc::new(Schema::new(page_fields))),
            state_schema,
            local_of: Vec::new(),
            last_updated: 0,
            event_time,
            expiry: Expiry::default(),
            sessions,
            last_removed: 0,
            last_dropped: 0,
            late_at_us: None,
            evict_at_us: None,
            late_keys: Default::default(),
            store: None,
            commit_ms: 0,
        })
    }

    /// An empty table of distinct group keys for a batch (`None` for a global aggregate).
    fn group_values(&self) -> datafusion::error::Result<Option<Box<dyn GroupValues>>> {
        if self.converter.is_none() {
            return Ok(None);
        }
        let fields: Vec<Field> = self
            .state_schema
            .fields()
            .iter()
            .take(self.group_exprs.len())
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        Ok(Some(new_group_values(Arc::new(Schema::new(fields)), &GroupOrdering::None)?))
    }

    fn fresh_accumulators(&self) -> datafusion::error::Result<Vec<Box<dyn GroupsAccumulator>>> {
        self.aggs.iter().map(|(f, _)| group_accumulator(f)).collect()
    }

    /// Feeds one input batch: interns its keys, brings in the state of groups this batch has
    /// not seen yet, then updates the accumulators with its rows.
    fn update(&mut self, t: &mut Touched, batch: &RecordBatch) -> datafusion::error::Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let n = batch.num_rows();
        let cols = match self.converter {
            Some(_) => conform_columns(
                &self.state_schema,
                self.group_exprs
                    .iter()
                    .map(|e| e.evaluate(batch)?.into_array(n))
                    .collect::<datafusion::error::Result<_>>()?,
            )?,
            None => Vec::new(),
        };
        let (batch, keys, bounds) = self.on_time(batch, cols)?;
        let batch = &batch;
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let (local, before) = self.assign(t, keys, bounds.as_ref(), n)?;
        let k = t.gids.len();
        for (((agg, filter), acc), (col, width)) in self.aggs.iter().zip(t.accs.iter_mut()).zip(&self.state_cols) {
            if let Some((rows, at)) = &before {
                acc.merge_batch(&rows.columns()[1 + col..1 + col + width], at, k)?;
            }
            let values = agg
                .expressions()
                .iter()
                .map(|e| e.evaluate(batch)?.into_array(n))
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            let filter = match filter {
                Some(f) => {
                    let a = f.evaluate(batch)?.into_array(n)?;
                    Some(a.as_any().downcast_ref::<BooleanArray>().cloned().ok_or_else(|| {
                        DataFusionError::Internal("aggregate FILTER did not evaluate to booleans".into())
                    })?)
                }
                None => None,
            };
            acc.update_batch(&values, &local, filter.as_ref(), k)?;
        }
        Ok(())
    }

    /// Feeds one batch of the first phase's output (`partial`: its group keys, then each
    /// aggregate's state fields, one row per key of an input partition), as `update` feeds rows.
    fn merge(&mut self, t: &mut Touched, partial: &RecordBatch) -> datafusion::error::Result<()> {
        let nk = self.group_exprs.len();
        let cols = match self.converter {
            Some(_) => conform_columns(&self.state_schema, partial.columns()[..nk].to_vec())?,
            None => Vec::new(),
        };
        let (partial, keys, bounds) = self.on_time(partial, cols)?;
        let n = partial.num_rows();
        if n == 0 {
            return Ok(());
        }
        let (local, before) = self.assign(t, keys, bounds.as_ref(), n)?;
        let k = t.gids.len();
        for (acc, (col, width)) in t.accs.iter_mut().zip(&self.state_cols) {
            if let Some((rows, at)) = &before {
                acc.merge_batch(&rows.columns()[1 + col..1 + col + width], at, k)?;
            }
            acc.merge_batch(&partial.columns()[nk + col..nk + col + width], &local, k)?;
        }
        Ok(())
    }

    /// The local group index of each of a batch's `n` rows (their group `keys`, and event-time
    /// `bounds` when the key holds one), given out as the batch first sees each group; and the
    /// state rows of the groups first seen here that have state, with their local indices.
    fn assign(
        &mut self,
        t: &mut Touched,
        keys: Vec<ArrayRef>,
        bounds: Option<&arrow_array::Int64Array>,
        n: usize,
    ) -> datafusion::error::Result<(Vec<usize>, Option<KnownState>)> {
        let input = t.keys.len();
        let mut known = Vec::new();
        let mut local: Vec<usize> = Vec::with_capacity(n);
        match (&self.converter, t.values.as_mut()) {
            (Some(converter), Some(values)) => {
                // Rows to the batch's distinct keys first (DataFusion's group-by table, made for
                // the key types); only keys new to this batch meet the state table.
                let seen = values.len();
                let mut ids = Vec::with_capacity(n);
                values.intern(&keys, &mut ids)?;
                let mut first_rows = vec![u32::MAX; values.len() - seen];
                for (row, &id) in ids.iter().enumerate() {
                    if let Some(first) = id.checked_sub(seen).and_then(|i| first_rows.get_mut(i))
                        && *first == u32::MAX
                    {
                        *first = row as u32;
                    }
                }
                let at = arrow_array::UInt32Array::from(first_rows);
                let new_keys = keys
                    .iter()
                    .map(|c| arrow_select::take::take(c, &at, None))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let mut gids = Vec::with_capacity(at.len());
                self.table.intern(converter.convert_columns(&new_keys)?.iter().map(|r| r.data()), &mut gids);
                if self.local_of.len() < self.table.num_gids() {
                    self.local_of.resize(self.table.num_gids(), u32::MAX);
                }
                for (&g, &row) in gids.iter().zip(at.values()) {
                    let l = self.touch(t, g, (input, row as usize), bounds, &mut known);
                    t.local_of_value.push(l);
                }
                local.extend(ids.iter().map(|id| t.local_of_value[*id] as usize));
            }
            (Some(_), None) => {
                return Err(DataFusionError::Internal("a grouped aggregate without its batch key table".into()));
            }
            (None, _) => {
                let mut gid = Vec::with_capacity(1);
                self.table.intern(std::iter::once(&[][..]), &mut gid);
                if self.local_of.len() < self.table.num_gids() {
                    self.local_of.resize(self.table.num_gids(), u32::MAX);
                }
                let l = self.touch(t, gid[0], (input, 0), None, &mut known);
                local.resize(n, l as usize);
            }
        }
        t.keys.push(keys);
        if known.is_empty() {
            return Ok((local, None));
        }
        let at = known.iter().map(|g| self.local_of[*g as usize] as usize).collect();
        Ok((local, Some((self.table.get(&known)?, at))))
    }

    /// Group `g` (its key first seen at `key_at`: input batch, row) as the running batch sees
    /// it: its index among the batch's groups, given out on first sight — when the group has a
    /// state row it joins `known` (its state is merged in), otherwise its event-time bound
    /// (`bounds`, by row) is registered for eviction.
    fn touch(
        &mut self,
        t: &mut Touched,
        g: usize,
        key_at: (usize, usize),
        bounds: Option<&arrow_array::Int64Array>,
        known: &mut Vec<u32>,
    ) -> u32 {
        let l = self.local_of[g];
        if l != u32::MAX {
            return l;
        }
        let l = t.gids.len() as u32;
        self.local_of[g] = l;
        t.gids.push(g as u32);
        t.key_at.push(key_at);
        if self.table.contains(g as u32) {
            known.push(g as u32);
        } else if let Some(b) = bounds
            && b.is_valid(key_at.1)
        {
            self.expiry.insert(b.value(key_at.1), g as u32);
        }
        l
    }

    /// A batch and its group key columns `cols` (-0.0 made 0.0), with late rows dropped: those
    /// whose event-time bound the watermark has reached (counted), as Spark drops them. Returns
    /// the rows kept, their keys and their event-time bounds (with an event-time key).
    fn on_time(
        &mut self,
        batch: &RecordBatch,
        cols: Vec<ArrayRef>,
    ) -> datafusion::error::Result<(RecordBatch, Vec<ArrayRef>, Option<arrow_array::Int64Array>)> {
        // One group for 0.0 and -0.0, as in Spark (and as DataFusion's key tables see them; the
        // state table's row format would tell them apart).
        let cols: Vec<ArrayRef> = cols.iter().map(normalize_float_zero).collect();
        let n = batch.num_rows();
        let Some(et) = self.event_time else { return Ok((batch.clone(), cols, None)) };
        let bounds = et.bounds(&cols[et.key])?;
        let Some(w) = self.late_at_us else { return Ok((batch.clone(), cols, Some(bounds))) };
        let keep: BooleanArray = bounds.iter().map(|b| Some(b.is_none_or(|b| b > w))).collect();
        let kept = keep.true_count();
        if kept == n {
            return Ok((batch.clone(), cols, Some(bounds)));
        }
        if let Some(converter) = &self.converter {
            let rows = converter.convert_columns(&cols)?;
            for (i, k) in keep.iter().enumerate() {
                if k == Some(false) {
                    self.late_keys.insert(rows.row(i).as_ref().to_vec());
                }
            }
        }
        let cols =
            cols.iter().map(|c| arrow_select::filter::filter(c, &keep)).collect::<std::result::Result<Vec<_>, _>>()?;
        let bounds = arrow_select::filter::filter(&bounds, &keep)?;
        let bounds = bounds.as_any().downcast_ref::<arrow_array::Int64Array>().cloned();
        Ok((arrow_select::filter::filter_record_batch(batch, &keep)?, cols, bounds))
    }

    /// The touched groups' new state rows, in local order: as the state store keeps them
    /// (typed keys) and as the state table does (binary keys).
    fn touched_rows(&self, t: &mut Touched) -> datafusion::error::Result<(RecordBatch, RecordBatch)> {
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.state_schema.fields().len());
        for key in 0..self.group_exprs.len() {
            let arrays: Vec<&dyn arrow_array::Array> = t.keys.iter().map(|k| k[key].as_ref()).collect();
            cols.push(arrow_select::interleave::interleave(&arrays, &t.key_at)?);
        }
        let mut states = Vec::new();
        for acc in t.accs.iter_mut() {
            states.extend(acc.state(EmitTo::All)?);
        }
        let n = t.gids.len();
        let mut page: Vec<ArrayRef> = vec![Arc::new(self.table.keys(&t.gids))];
        page.extend(states.iter().cloned());
        cols.extend(states);
        Ok((conform(&self.state_schema, cols, n)?, conform(&self.table.schema(), page, n)?))
    }

    /// Output rows (keys, then each aggregate's value) from state rows.
    fn finalize(&self, rows: &RecordBatch) -> datafusion::error::Result<RecordBatch> {
        let n = rows.num_rows();
        let idx: Vec<usize> = (0..n).collect();
        let nk = self.group_exprs.len();
        let mut cols: Vec<ArrayRef> = rows.columns()[..nk].to_vec();
        for ((agg, _), (col, width)) in self.aggs.iter().zip(&self.state_cols) {
            let mut acc = group_accumulator(agg)?;
            acc.merge_batch(&rows.columns()[nk + col..nk + col + width], &idx, n)?;
            cols.push(acc.evaluate(EmitTo::All)?);
        }
        conform(&self.out_schema, cols, n)
    }

    /// What the state's layout depends on: group key types and aggregate functions. A restart
    /// whose fingerprint differs cannot use the checkpointed state.
    pub(crate) fn fingerprint(&self) -> String {
        let keys: Vec<String> =
            self.out_schema.fields().iter().take(self.group_exprs.len()).map(|f| f.data_type().to_string()).collect();
        let aggs: Vec<String> = self.aggs.iter().map(|(a, _)| a.fun().name().to_string()).collect();
        let state = self.state_schema.fields().iter().map(|f| f.data_type().to_string()).collect::<Vec<_>>().join(",");
        format!("keys=[{}] aggregates=[{}] state=[{state}]", keys.join(","), aggs.join(","))
    }

    /// Replaces the state with `rows`: state rows (typed keys) with one row per key.
    fn restore(&mut self, rows: RecordBatch) -> datafusion::error::Result<()> {
        let nk = self.group_exprs.len();
        let n = rows.num_rows();
        let keys: BinaryArray = match &self.converter {
            Some(c) => c.convert_columns(&rows.columns()[..nk])?.try_into_binary()?,
            None => std::iter::repeat_n(Some(&[][..]), n).collect(),
        };
        self.table = StateTable::new(self.table.schema());
        let mut ids = Vec::with_capacity(n);
        self.table.intern(keys.iter().map(Option::unwrap_or_default), &mut ids);
        self.expiry.clear();
        if let Some(s) = &mut self.sessions {
            s.restore(&rows, &ids)?;
        }
        if let Some(et) = self.event_time {
            let bounds = et.bounds(rows.column(et.key))?;
            for (i, g) in ids.iter().enumerate() {
                if bounds.is_valid(i) {
                    self.expiry.insert(bounds.value(i), *g as u32);
                }
            }
        }
        let mut page: Vec<ArrayRef> = vec![Arc::new(keys)];
        page.extend(rows.columns()[nk..].iter().cloned());
        let page = conform(&self.table.schema(), page, n)?;
        // In pages of at most PAGE_ROWS, as the table would have built them.
        for (i, gids) in ids.chunks(state_table::PAGE_ROWS).enumerate() {
            let rows = page.slice(i * state_table::PAGE_ROWS, gids.len());
            self.table.append(gids.iter().map(|g| *g as u32).collect(), rows)?;
        }
        self.local_of.clear();
        Ok(())
    }

    /// A snapshot of the state, built off the loop: the table's pages (shared), turned into
    /// state rows with typed keys one page at a time as they are written.
    fn snapshot(&self) -> crate::state::Snapshot {
        snapshot(&self.table, self.converter.clone(), self.state_schema.clone())
    }

    /// Runs the batch in the `input` slot with watermark `watermark_ms`: returns what `mode`
    /// emits and, with a state store, the delta (the touched groups' new state rows) and the
    /// key columns of the groups evicted.
    async fn process(
        &mut self,
        mode: OutputMode,
        watermark: Option<BatchWatermark>,
        rows: usize,
    ) -> datafusion::error::Result<(Vec<RecordBatch>, Option<RecordBatch>, Vec<ArrayRef>)> {
        // Spark: the watermark drops late rows and evicts state in append and update modes;
        // complete mode keeps every group.
        let w = match (self.event_time, watermark, mode) {
            (Some(_), Some(w), OutputMode::Append | OutputMode::Update) => Some(w),
            _ => None,
        };
        self.late_at_us = w.map(|w| w.late_events_ms.saturating_mul(1000));
        self.evict_at_us = w.map(|w| w.eviction_ms.saturating_mul(1000));
        self.late_keys.clear();
        self.last_dropped = 0;
        self.last_removed = 0;
        self.table.release_after_growth();
        let mut t = Touched {
            gids: Vec::new(),
            key_at: Vec::new(),
            keys: Vec::new(),
            accs: self.fresh_accumulators()?,
            values: self.group_values()?,
            local_of_value: Vec::new(),
        };
        let result = self.process_touched(mode, &mut t, rows).await;
        for g in &t.gids {
            self.local_of[*g as usize] = u32::MAX;
        }
        if self.sessions.is_none() {
            self.last_dropped = self.late_keys.len() as u64;
        }
        self.late_keys = Default::default();
        result
    }

    async fn process_touched(
        &mut self,
        mode: OutputMode,
        t: &mut Touched,
        rows: usize,
    ) -> datafusion::error::Result<(Vec<RecordBatch>, Option<RecordBatch>, Vec<ArrayRef>)> {
        if self.sessions.is_some() {
            return self.process_sessions(mode).await;
        }
        // `rows`: the step's input rows (those reaching the aggregation are known only after
        // the plan below has run).
        let large = rows > DIRECT_MAX_ROWS;
        let fold = large && self.partial_skip == 0;
        if large && !fold {
            self.partial_skip -= 1;
        }
        match &self.partial {
            Some(partial) if fold => {
                let folded = partial.run().await?;
                // Keys that barely repeat within a batch: the first phase costs more than it
                // saves (and holds the batch twice); row by row for the next batches.
                if folded.iter().map(RecordBatch::num_rows).sum::<usize>() * 2 > rows {
                    self.partial_skip = PARTIAL_RETRY_BATCHES;
                }
                for b in folded {
                    self.merge(t, &b)?;
                }
            }
            _ => {
                for b in self.below.run().await? {
                    self.update(t, &b)?;
                }
            }
        }
        // The batch's key table is done with: free it before the state table grows (a large
        // one counts towards giving the allocator's free pages back; see `StateTable::let_go`).
        let freed = t.values.take().map_or(0, |v| v.size()) + t.local_of_value.capacity() * 4;
        t.local_of_value = Vec::new();
        self.table.let_go(freed);
        self.last_updated = t.gids.len() as u64;
        let mut delta = None;
        let mut emit = None;
        if !t.gids.is_empty() {
            let (rows, page) = self.touched_rows(t)?;
            self.table.append(t.gids.clone(), page)?;
            if self.store.is_some() {
                delta = Some(rows.clone());
            }
            emit = Some(rows);
        }
        let (expired, removed) = self.evict()?;
        let emit = match mode {
            OutputMode::Complete if self.table.len() > 0 => {
                Some(typed_rows(self.converter.as_deref(), &self.state_schema, &self.table.all()?)?)
            }
            OutputMode::Complete => None,
            // With an event-time key, append mode emits each group once: when it expires.
            OutputMode::Append if self.event_time.is_some() => expired,
            _ => emit,
        };
        let Some(emit) = emit else { return Ok((Vec::new(), delta, removed)) };
        self.out.set(vec![self.finalize(&emit)?]);
        let result = self.above.run().await;
        self.out.set(Vec::new());
        Ok((result?, delta, removed))
    }

    /// Removes the groups the watermark has passed: returns their final state rows and their
    /// key columns.
    fn evict(&mut self) -> datafusion::error::Result<(Option<RecordBatch>, Vec<ArrayRef>)> {
        let Some(w) = self.evict_at_us else { return Ok((None, Vec::new())) };
        let gids: Vec<u32> = self.expiry.take_expired(w).into_iter().filter(|g| self.table.contains(*g)).collect();
        if gids.is_empty() {
            return Ok((None, Vec::new()));
        }
        let rows = typed_rows(self.converter.as_deref(), &self.state_schema, &self.table.get(&gids)?)?;
        self.table.remove(&gids)?;
        self.last_removed = gids.len() as u64;
        let keys = rows.columns()[..self.group_exprs.len()].to_vec();
        Ok((Some(rows), keys))
    }

    fn metrics(&self) -> StateMetrics {
        StateMetrics {
            num_rows_total: self.table.len() as u64,
            num_rows_updated: self.last_updated,
            num_rows_removed: self.last_removed,
            num_rows_dropped_by_watermark: self.last_dropped,
            memory_used_bytes: (self.table.memory()
                + self.local_of.capacity() * 4
                + self.expiry.memory()
                + self.sessions.as_ref().map_or(0, session::Sessions::memory)) as u64,
            commit_time_ms: self.commit_ms,
        }
    }
}

/// The group key that holds the watermark's event time: `window(<column>, ...)` (or the column
/// the window rewrite made of a sliding one), or `<column>` itself.
fn event_time_key(group: &[Expr], column: &str, windows: &[(String, Expr)]) -> Option<EventTimeKey> {
    let is_time = |e: &Expr| matches!(e, Expr::Column(c) if c.name == column);
    group.iter().enumerate().find_map(|(key, e)| {
        let window = match e.clone().unalias() {
            Expr::ScalarFunction(f) if f.func.name() == window::WINDOW || f.func.name() == window::SESSION_WINDOW => {
                is_time(&f.args[0])
            }
            Expr::Column(c) if c.name.starts_with(window::WINDOW_COLUMN) => {
                windows.iter().any(|(name, time)| *name == c.name && is_time(time))
            }
            Expr::Column(c) if c.name == column => return Some(EventTimeKey { key, window: false }),
            _ => false,
        };
        window.then_some(EventTimeKey { key, window: true })
    })
}

/// Rows of a page a snapshot filters, converts and encodes at a time.
const SNAPSHOT_SLICE_ROWS: usize = 1 << 15;

/// A snapshot of `table`: its pages (shared) with their live-row masks, filtered and turned into
/// state rows (typed keys) a slice of [`SNAPSHOT_SLICE_ROWS`] at a time as the snapshot is
/// written, off the loop. In slices, the transient copies (filtered rows, typed keys, the
/// encoded message) stay small: whole pages' copies, made on the blocking pool's threads, stayed
/// resident in those threads' malloc arenas (a 2 M-key state's peak memory with a checkpoint:
/// 93-98 B a key by whole pages, 78-85 B in slices).
fn snapshot(table: &StateTable, converter: Option<Arc<RowConverter>>, schema: SchemaRef) -> crate::state::Snapshot {
    let slices = table.pages().into_iter().flat_map(|(page, live)| {
        let rows = page.num_rows();
        (0..rows).step_by(SNAPSHOT_SLICE_ROWS).map(move |at| {
            let len = SNAPSHOT_SLICE_ROWS.min(rows - at);
            (page.slice(at, len), live.as_ref().map(|m| m.slice(at, len)))
        })
    });
    Box::new(slices.map(move |(page, live)| {
        let page = match live {
            Some(mask) => arrow_select::filter::filter_record_batch(&page, &mask)?,
            None => page,
        };
        Ok(typed_rows(converter.as_deref(), &schema, &page)?)
    }))
}

/// State table rows (binary keys, state fields) as state rows (typed keys, state fields).
fn typed_rows(
    converter: Option<&RowConverter>,
    schema: &SchemaRef,
    page: &RecordBatch,
) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
    let mut cols = Vec::with_capacity(schema.fields().len());
    if let Some(c) = converter {
        let keys = page.column(0).as_any().downcast_ref::<BinaryArray>().ok_or_else(|| {
            arrow_schema::ArrowError::SchemaError("state table rows must start with binary keys".into())
        })?;
        let parser = c.parser();
        // The bytes came from this converter (`convert_columns`), never from outside.
        cols.extend(c.convert_rows(keys.iter().map(|k| parser.parse(k.unwrap_or_default())))?);
    }
    cols.extend(page.columns()[1..].iter().cloned());
    let opts = arrow_array::RecordBatchOptions::new().with_row_count(Some(page.num_rows()));
    RecordBatch::try_new_with_options(schema.clone(), cols, &opts)
}

/// Columns cast to the types of `schema`'s first fields where they differ.
fn conform_columns(schema: &SchemaRef, cols: Vec<ArrayRef>) -> datafusion::error::Result<Vec<ArrayRef>> {
    Ok(cols
        .into_iter()
        .zip(schema.fields())
        .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { arrow_cast::cast(&c, f.data_type()) })
        .collect::<std::result::Result<Vec<_>, _>>()?)
}

/// Columns cast to `schema`'s types where they differ, as a batch of `rows` rows.
fn conform(schema: &SchemaRef, cols: Vec<ArrayRef>, rows: usize) -> datafusion::error::Result<RecordBatch> {
    let cols = conform_columns(schema, cols)?;
    let opts = arrow_array::RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(schema.clone(), cols, &opts)?)
}

/// The schema of state rows: the group keys, then each aggregate's state fields.
fn state_schema(
    out_schema: &SchemaRef,
    names: &[String],
    nk: usize,
    aggs: &[AggregateWithFilter],
) -> datafusion::error::Result<SchemaRef> {
    let mut fields: Vec<Field> =
        out_schema.fields().iter().zip(names).take(nk).map(|(f, name)| f.as_ref().clone().with_name(name)).collect();
    for (i, (agg, _)) in aggs.iter().enumerate() {
        for f in agg.state_fields()? {
            // `count(*)[count]`, `avg(x)[sum]`: the output column and the state field.
            let part = f.name().rsplit_once('[').map(|(_, p)| p.trim_end_matches(']')).unwrap_or(f.name());
            fields.push(Field::new(format!("{}[{part}]", names[nk + i]), f.data_type().clone(), true));
        }
    }
    let metadata = [(crate::state::KEYS_METADATA.to_string(), nk.to_string())].into();
    Ok(Arc::new(Schema::new_with_metadata(fields, metadata)))
}

#[cfg(test)]
mod tests {
    use arrow_array::cast::AsArray;
    use arrow_array::{Int64Array, StringArray};

    use super::*;

    fn input() -> (SchemaRef, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("ts", DataType::Int64, false),
        ]));
        let batch = |from: i64, len: i64| {
            let n: Int64Array = (from..from + len).map(|i| (i % 7 != 3).then_some(i)).collect();
            let v: StringArray = (from..from + len).map(|i| (i % 5 != 0).then(|| format!("w{i}"))).collect();
            let ts = Int64Array::from_iter_values(from..from + len);
            RecordBatch::try_new(schema.clone(), vec![Arc::new(v), Arc::new(n), Arc::new(ts)]).unwrap()
        };
        (schema.clone(), vec![batch(0, 40), batch(40, 0), batch(40, 1), batch(41, 300)])
    }

    /// Rows in input order per partition, as the executor gives them, compared as sorted lines.
    fn lines(batches: &[RecordBatch]) -> Vec<String> {
        let mut out = Vec::new();
        for b in batches {
            for r in 0..b.num_rows() {
                let cells: Vec<String> = b
                    .columns()
                    .iter()
                    .map(|c| arrow_cast::display::array_value_to_string(c, r).unwrap_or_default())
                    .collect();
                out.push(cells.join("|"));
            }
        }
        out.sort();
        out
    }

    /// A snapshot of a page larger than a slice, with garbage rows in it, holds exactly the live
    /// rows, in order, their keys converted back to their type.
    #[test]
    fn a_snapshot_slices_big_pages_and_keeps_only_live_rows() {
        let rows = SNAPSHOT_SLICE_ROWS * 2 + 100;
        let converter = Arc::new(RowConverter::new(vec![SortField::new(DataType::Utf8)]).unwrap());
        let words: StringArray = (0..rows).map(|i| Some(format!("w{i}"))).collect();
        let keys = converter.convert_columns(&[Arc::new(words)]).unwrap().try_into_binary().unwrap();
        let table_schema = Arc::new(Schema::new(vec![
            Field::new("key", DataType::Binary, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let mut table = StateTable::new(table_schema.clone());
        let mut ids = Vec::new();
        table.intern(keys.iter().map(Option::unwrap_or_default), &mut ids);
        let gids: Vec<u32> = ids.iter().map(|g| *g as u32).collect();
        let n = Int64Array::from_iter_values(0..rows as i64);
        table
            .append(gids.clone(), RecordBatch::try_new(table_schema, vec![Arc::new(keys), Arc::new(n)]).unwrap())
            .unwrap();
        // A third of the rows become garbage (too few for the page to be rewritten).
        let gone: Vec<u32> = gids.iter().copied().filter(|g| g % 3 == 0).collect();
        table.remove(&gone).unwrap();
        let state_schema = Arc::new(Schema::new(vec![
            Field::new("w", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let batches = snapshot(&table, Some(converter), state_schema).collect::<Result<Vec<_>>>().unwrap();
        assert_eq!(batches.len(), 3, "a page of {rows} rows in slices of {SNAPSHOT_SLICE_ROWS}");
        let mut got = Vec::new();
        for b in &batches {
            let (w, n) = (b.column(0).as_string::<i32>(), b.column(1).as_primitive::<arrow_array::types::Int64Type>());
            got.extend((0..b.num_rows()).map(|i| (w.value(i).to_string(), n.value(i))));
        }
        let want: Vec<(String, i64)> = (0..rows).filter(|i| i % 3 != 0).map(|i| (format!("w{i}"), i as i64)).collect();
        assert_eq!(got, want);
    }

    /// Small inputs of a filter/projection plan skip the executor: same rows, same schema, and
    /// in input order; a plan with other operators (explode) keeps the executor.
    #[tokio::test]
    async fn small_stateless_batches_run_directly_with_the_executors_results() {
        let (schema, batches) = input();
        let queries = [
            ("SELECT v FROM input", true),
            ("SELECT upper(v) AS u, n * 2 AS m, ts FROM input WHERE n % 2 = 0 AND v IS NOT NULL", true),
            ("SELECT concat(v, ':', CAST(n AS STRING)) AS value FROM input WHERE length(v) > 2", true),
            ("SELECT * FROM input WHERE n > 100", true),
            ("SELECT ts, now() AS t FROM input", true),
            ("SELECT explode(split(v, '1')) AS part FROM input", false),
        ];
        for (sql, direct) in queries {
            let mut step = SqlStep::try_new(0, sql, schema.clone(), OutputMode::Append, None).await.unwrap();
            let Kind::Stateless(plan) = &step.kind else { panic!("{sql}: not stateless") };
            assert_eq!(
                plan.direct.is_some(),
                direct,
                "{sql}: direct path for\n{}",
                datafusion::physical_plan::displayable(plan.plan.as_ref()).indent(true)
            );
            step.clock.set(1_700_000_000_000);
            step.input.set(batches.clone());
            let executed = collect_partitioned(reset_plan_states(plan.plan.clone()).unwrap(), plan.task.clone())
                .await
                .unwrap()
                .into_iter()
                .flatten()
                .collect::<Vec<_>>();
            let out = step.process(0, 1_700_000_000_000, None, batches.clone(), OutputMode::Append).await.unwrap();
            assert!(!out.is_empty(), "{sql}: no output");
            assert!(out.iter().all(|b| b.num_rows() > 0 && b.schema() == step.output_schema), "{sql}: schema");
            assert_eq!(lines(&out), lines(&executed), "{sql}");
            if direct {
                // Input order: the filter on `n > 100` etc. keeps `ts` ascending.
                let first = out[0].schema().index_of("ts").ok();
                if let Some(i) = first {
                    let ts: Vec<i64> = out
                        .iter()
                        .flat_map(|b| b.column(i).as_primitive::<arrow_array::types::Int64Type>().values().to_vec())
                        .collect();
                    assert!(ts.windows(2).all(|w| w[0] < w[1]), "{sql}: order");
                }
            }
        }
        // Over the threshold the executor runs (and gives the same rows).
        let big: Vec<RecordBatch> = (0..30).map(|_| batches[3].clone()).collect();
        assert!(big.iter().map(RecordBatch::num_rows).sum::<usize>() > DIRECT_MAX_ROWS);
        let mut step =
            SqlStep::try_new(0, "SELECT v FROM input WHERE n > 100", schema, OutputMode::Append, None).await.unwrap();
        let out = step.process(0, 0, None, big.clone(), OutputMode::Append).await.unwrap();
        let expected: usize = big
            .iter()
            .map(|b| {
                let n = b.column(1).as_primitive::<arrow_array::types::Int64Type>();
                n.iter().filter(|x| x.is_some_and(|x| x > 100)).count()
            })
            .sum();
        assert_eq!(out.iter().map(RecordBatch::num_rows).sum::<usize>(), expected);
    }

    /// Large inputs take the parallel first phase (DataFusion's partial aggregation); the same
    /// batches fed row by row give the same state, the same output and the same counts, for
    /// every kind of aggregate: DISTINCT, nulls in keys and values, several keys, a -0.0 key, a
    /// global one, and a windowed one with late rows dropped and groups evicted by the watermark.
    #[tokio::test]
    async fn large_inputs_aggregate_in_parallel_as_row_by_row() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("t", DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, None), false),
        ]));
        // ~300 keys; event time ascending, but one row in 97 far behind (late in the 2nd batch).
        let rows = |from: i64, len: i64| {
            let v: StringArray =
                (from..from + len).map(|i| (i % 11 != 0).then(|| format!("k{}", i * 7 % 301))).collect();
            let n: Int64Array = (from..from + len).map(|i| (i % 13 != 5).then_some(i % 1000 - 300)).collect();
            let t: arrow_array::TimestampMicrosecondArray = arrow_array::TimestampMicrosecondArray::from_iter_values(
                (from..from + len).map(|i| if i % 97 == 0 { 0 } else { i * 1_000 }),
            );
            RecordBatch::try_new(schema.clone(), vec![Arc::new(v), Arc::new(n), Arc::new(t)]).unwrap()
        };
        let batches = [rows(0, 20_000), rows(20_000, 20_000), rows(40_000, 9_000)];
        let watermark = |batch: i64| BatchWatermark { late_events_ms: batch * 20_000, eviction_ms: batch * 20_000 };
        let queries = [
            (
                "SELECT v, count(*) AS c, sum(n) AS s, min(n) AS lo, max(t) AS hi, avg(n) AS a, \
                 count(DISTINCT n % 7) AS d, sum(CASE WHEN n % 2 = 0 THEN n END) AS e FROM input GROUP BY v",
                None,
            ),
            ("SELECT v, n % 4 AS m, count(n) AS c FROM input GROUP BY v, n % 4", None),
            ("SELECT count(*) AS c, sum(n) AS s, count(DISTINCT v) AS d FROM input", None),
            // -0.0 and 0.0 are one group (as in Spark).
            (
                "SELECT CASE WHEN n % 2 = 0 THEN CAST('-0.0' AS DOUBLE) ELSE CAST('0.0' AS DOUBLE) END AS z, \
                 count(*) AS c FROM input \
                 GROUP BY CASE WHEN n % 2 = 0 THEN CAST('-0.0' AS DOUBLE) ELSE CAST('0.0' AS DOUBLE) END",
                None,
            ),
            (
                "SELECT window(t, '5 seconds') AS w, v, count(*) AS c, sum(n) AS s FROM input \
                 GROUP BY window(t, '5 seconds'), v",
                Some("t"),
            ),
        ];
        for (sql, event_time) in queries {
            let mode = OutputMode::Update;
            let mut parallel = SqlStep::try_new(0, sql, schema.clone(), mode, event_time).await.unwrap();
            let mut by_row = SqlStep::try_new(0, sql, schema.clone(), mode, event_time).await.unwrap();
            let Kind::Aggregate(agg) = &mut by_row.kind else { panic!("{sql}: not an aggregate") };
            // A global aggregate runs row by row (one group: nothing to fold in parallel).
            let global = !sql.contains("GROUP BY");
            assert_eq!(agg.partial.take().is_some(), !global, "{sql}: first phase");
            let mut dropped = 0;
            for (i, b) in batches.iter().enumerate() {
                assert!(b.num_rows() > DIRECT_MAX_ROWS);
                let w = event_time.map(|_| watermark(i as i64));
                let a = parallel.process(i as u64, 0, w, vec![b.clone()], mode).await.unwrap();
                let b = by_row.process(i as u64, 0, w, vec![b.clone()], mode).await.unwrap();
                assert_eq!(lines(&a), lines(&b), "{sql}: output of batch {i}");
                let (ma, mb) = (parallel.state_metrics().unwrap(), by_row.state_metrics().unwrap());
                assert_eq!(
                    (ma.num_rows_total, ma.num_rows_updated, ma.num_rows_removed, ma.num_rows_dropped_by_watermark),
                    (mb.num_rows_total, mb.num_rows_updated, mb.num_rows_removed, mb.num_rows_dropped_by_watermark),
                    "{sql}: counts of batch {i}"
                );
                assert!(ma.num_rows_total > 0, "{sql}: no state");
                dropped += ma.num_rows_dropped_by_watermark;
                if event_time.is_some() && i > 0 {
                    assert!(ma.num_rows_removed > 0, "{sql}: nothing evicted in batch {i}");
                }
            }
            if event_time.is_some() {
                assert!(dropped > 0, "{sql}: nothing was late");
            }
            let (Kind::Aggregate(a), Kind::Aggregate(b)) = (&parallel.kind, &by_row.kind) else { unreachable!() };
            let state = |a: &Aggregator| {
                lines(&[typed_rows(a.converter.as_deref(), &a.state_schema, &a.table.all().unwrap()).unwrap()])
            };
            assert_eq!(state(a), state(b), "{sql}: state");
            if sql.contains("'-0.0'") {
                assert_eq!(a.table.len(), 1, "{sql}: one group for 0.0 and -0.0: {:?}", state(a));
            }
        }
    }
}
